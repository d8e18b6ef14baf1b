"""Triton Python model `postprocessing`: decoder ids -> text, exact under streaming.

Each chatglm_decoder response carries output_ids (the new ids), prev_ids (up to
16 ids generated right before them) and is_final. The text of a response is
ChatGLMTokenizer.decode_delta(prev_ids, output_ids, is_final): stateless, and
the pieces of one stream concatenate to exactly decode(all ids) (multi-byte
characters, <n>, blanks and emoji are never split or duplicated).

token_count (INT32 [1]) = len(output_ids) of that decoder response: how many
generated tokens the response carries (more than one when the decoder merged
steps that piled up while its responder was behind; 0 for an empty final one).
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

from glmserve.tokenizer import ChatGLMTokenizer


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}
        ckpt = os.environ.get("GLM_CHECKPOINT_DIR") or params.get("checkpoint_dir", "")
        if not os.path.isabs(ckpt):
            ckpt = os.path.normpath(os.path.join(args["model_repository"], ckpt))
        spm = os.path.join(ckpt, "ice_text.model")
        if not os.path.isfile(spm):
            raise pb_utils.TritonModelException(
                f"postprocessing: no tokenizer at {spm}: this checkpoint is ids-only "
                "(serve chatglm_decoder alone)"
            )
        self.tokenizer = ChatGLMTokenizer(spm)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                ids = pb_utils.get_input_tensor_by_name(request, "output_ids").as_numpy()
                prev = pb_utils.get_input_tensor_by_name(request, "prev_ids").as_numpy()
                final = pb_utils.get_input_tensor_by_name(request, "is_final").as_numpy()
                text = self.tokenizer.decode_delta(
                    prev.reshape(-1).tolist(), ids.reshape(-1).tolist(), bool(final.reshape(-1)[0])
                )
                out = np.asarray([[text.encode("utf-8")]], dtype=np.object_)
                count = np.asarray([[ids.size]], dtype=np.int32)
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[
                            pb_utils.Tensor("text_output", out),
                            pb_utils.Tensor("token_count", count),
                        ]
                    )
                )
            except Exception as e:  # noqa: BLE001 - one bad request must not fail the batch
                err = pb_utils.TritonError(f"postprocessing: {type(e).__name__}: {e}")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=err))
        return responses
