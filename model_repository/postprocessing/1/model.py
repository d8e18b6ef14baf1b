"""Triton Python model `postprocessing`: decoder ids -> text, exact under streaming.

Each chatglm_decoder response carries one choice's new ids: output_ids, prev_ids (up
to 16 ids of that choice generated right before them) and is_final (the choice's
last response). The text of a response is ChatGLMTokenizer.decode_delta(prev_ids,
output_ids, is_final) (glmserve/decoder_output.py, shared with the OpenAI server):
stateless, and the pieces of one choice concatenate to exactly decode(all ids) (multi-byte characters, <n>, blanks and emoji are never
split or duplicated). On a choice's last response, trim_bytes (a stop string and
what followed it, computed by the engine on the same token texts) are cut from the
end of the text.

Outputs: text_output; token_count (INT32 [1]) = len(output_ids), how many generated
tokens the response carries (more than one when the decoder merged steps that piled
up while its responder was behind; 0 for an empty final one); index, finish_reason,
prompt_tokens and completion_tokens passed through from the decoder (0 / "" when a
caller sends only the first three inputs); token_logprobs: "" when the request asked for
none, else a JSON list with one entry per token:
``{"id", "token", "bytes", "logprob", "top_logprobs": [{"id", "token", "bytes", "logprob"}]}``
(``token`` is the id's own decoded text, ``bytes`` its UTF-8 or byte-fallback bytes).
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

from glmserve.decoder_output import TokenTable, logprob_entries, response_text
from glmserve.tokenizer import ChatGLMTokenizer


def _input(request, name):
    t = pb_utils.get_input_tensor_by_name(request, name)
    return None if t is None else t.as_numpy()


def _scalar(request, name, default):
    a = _input(request, name)
    return default if a is None or a.size == 0 else a.reshape(-1)[0]


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
        self.table = TokenTable(self.tokenizer)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except Exception as e:  # noqa: BLE001 - one bad request must not fail the batch
                err = pb_utils.TritonError(f"postprocessing: {type(e).__name__}: {e}")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=err))
        return responses

    def _logprobs(self, request, ids: list[int]) -> str:
        lp = _input(request, "output_logprobs")
        if lp is None or lp.size == 0:
            return ""
        k = len(ids)
        top_ids = _input(request, "top_logprob_ids")
        top_lp = _input(request, "top_logprobs")
        rows = top_ids is not None and top_ids.size and top_lp is not None and top_lp.size
        entries = logprob_entries(
            self.table,
            ids,
            lp.reshape(-1).tolist(),
            top_ids.reshape(k, -1).tolist() if rows else None,
            top_lp.reshape(k, -1).tolist() if rows else None,
        )
        return json.dumps(entries, ensure_ascii=False)

    def _one(self, request):
        ids = _input(request, "output_ids").reshape(-1).tolist()
        prev = _input(request, "prev_ids").reshape(-1).tolist()
        final = bool(_input(request, "is_final").reshape(-1)[0])
        trim = int(_scalar(request, "trim_bytes", 0))
        text = response_text(self.tokenizer, prev, ids, final, trim)
        reason = _scalar(request, "finish_reason", b"")
        reason = reason.decode("utf-8") if isinstance(reason, bytes) else str(reason)

        def tensor(name, value, dtype):
            return pb_utils.Tensor(name, np.asarray([[value]], dtype=dtype))

        outs = [
            tensor("text_output", text.encode("utf-8"), np.object_),
            tensor("token_count", len(ids), np.int32),
            tensor("index", int(_scalar(request, "index", 0)), np.int32),
            tensor("finish_reason", reason.encode("utf-8"), np.object_),
            tensor("prompt_tokens", int(_scalar(request, "prompt_tokens", 0)), np.int32),
            tensor("completion_tokens", int(_scalar(request, "completion_tokens", 0)), np.int32),
            tensor("token_logprobs", self._logprobs(request, ids).encode("utf-8"), np.object_),
        ]
        return pb_utils.InferenceResponse(output_tensors=outs)
