"""Triton's add_sub python model, written as Triton users write it.

``servegraph serve --model-repository examples/triton`` serves it as it is: the
``triton_python_backend_utils`` import below resolves to servegraph's implementation of
Triton's python-backend API when Triton's own stub is not there.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.model_config = model_config = json.loads(args["model_config"])
        output0_config = pb_utils.get_output_config_by_name(model_config, "OUTPUT0")
        output1_config = pb_utils.get_output_config_by_name(model_config, "OUTPUT1")
        self.output0_dtype = pb_utils.triton_string_to_numpy(output0_config["data_type"])
        self.output1_dtype = pb_utils.triton_string_to_numpy(output1_config["data_type"])
        pb_utils.Logger.log_info(
            f"{args['model_name']} version {args['model_version']} initialized on"
            f" {args['model_instance_kind']}; OUTPUT0 dims {output0_config['dims']},"
            f" max_batch_size {model_config['max_batch_size']}"
        )

    def execute(self, requests):
        responses = []
        for request in requests:
            in_0 = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            in_1 = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            if not (np.isfinite(in_0).all() and np.isfinite(in_1).all()):
                error = pb_utils.TritonError("INPUT0 and INPUT1 must be finite")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            out_0 = pb_utils.Tensor("OUTPUT0", (in_0 + in_1).astype(self.output0_dtype))
            out_1 = pb_utils.Tensor("OUTPUT1", (in_0 - in_1).astype(self.output1_dtype))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out_0, out_1]))
        return responses

    def finalize(self):
        pb_utils.Logger.log_info("add_sub finalized")
