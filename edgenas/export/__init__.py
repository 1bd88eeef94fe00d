"""Export of static subnets: ONNX, TFLite fp32 and int8, TFLite Micro checks, numeric verification, model cards."""
