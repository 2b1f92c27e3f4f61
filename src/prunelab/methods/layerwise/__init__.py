"""Layer-wise pruners that reconstruct each layer's outputs from calibration data: FeTa, Net-Trim, L-OBS."""
