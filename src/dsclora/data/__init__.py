"""Images in and out, MATLAB-compatible bicubic, benchmark folders, and training patches (HR -> LR)."""
