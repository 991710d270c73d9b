"""Images in and out, MATLAB-compatible bicubic resizing, and benchmark folders."""
