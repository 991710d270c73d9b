"""Running a deploy model fast: back-ends, the fused inference form, `auto`, exact tiling, the upscale pipeline."""
