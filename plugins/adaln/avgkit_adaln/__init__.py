"""Class-conditional conditioners for avgkit: the adaLN family and in-context class tokens."""
