"""Development tools beside the operator: the main job (demo), the API reference generator, the simulator."""
