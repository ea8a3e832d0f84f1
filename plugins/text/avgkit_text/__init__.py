"""avgkit text conditioner."""
