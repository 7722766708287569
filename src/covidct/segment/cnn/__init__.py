"""The CNN backend: a 2D and a 2.5D residual UNet trained on 8-bit CT slices.

``segment_cnn`` segments a CT in HU with the bundled ensemble (see
``models/MODEL_CARD.md``); ``covidct train-segmentation`` trains a new
bundle and ``covidct evaluate-segmentation`` measures one.
"""
