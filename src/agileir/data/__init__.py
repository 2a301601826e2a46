"""Image data for evaluation: MATLAB-compatible resize, image I/O, degradations, benchmark pairs."""
