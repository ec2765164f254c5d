"""Files copied into built repositories."""
