"""Files other tools run: ONNX, spandrel / chaiNNer SPAN, NTIRE kit modules, NCNN, and model metadata."""
