"""staging stage."""
