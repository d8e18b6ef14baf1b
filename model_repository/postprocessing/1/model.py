"""Triton Python model `postprocessing`: decoder ids -> text, exact under streaming.

Each chatglm_decoder response carries one choice's new ids: output_ids, prev_ids (up
to 16 ids of that choice generated right before them) and is_final (the choice's
last response). The text of a response is ChatGLMTokenizer.decode_delta(prev_ids,
output_ids, is_final): stateless, and the pieces of one choice concatenate to
exactly decode(all ids) (multi-byte characters, <n>, blanks and emoji are never
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
        self.texts = self.tokenizer.token_texts()

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except Exception as e:  # noqa: BLE001 - one bad request must not fail the batch
                err = pb_utils.TritonError(f"postprocessing: {type(e).__name__}: {e}")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=err))
        return responses

    def _token(self, i: int) -> dict:
        data = self.texts[i][1] if 0 <= i < len(self.texts) else b""
        return {"id": i, "token": self.tokenizer.decode([i]), "bytes": list(data)}

    def _logprobs(self, request, ids: list[int]) -> str:
        lp = _input(request, "output_logprobs")
        if lp is None or lp.size == 0:
            return ""
        lp = lp.reshape(-1)
        top_ids = _input(request, "top_logprob_ids")
        top_lp = _input(request, "top_logprobs")
        k = len(ids)
        top_ids = top_ids.reshape(k, -1) if top_ids is not None and top_ids.size else None
        top_lp = top_lp.reshape(k, -1) if top_lp is not None and top_lp.size else None
        out = []
        for t, i in enumerate(ids):
            entry = {**self._token(i), "logprob": float(lp[t]), "top_logprobs": []}
            if top_ids is not None and top_lp is not None:
                entry["top_logprobs"] = [
                    {**self._token(int(a)), "logprob": float(b)}
                    for a, b in zip(top_ids[t], top_lp[t], strict=True)
                ]
            out.append(entry)
        return json.dumps(out, ensure_ascii=False)

    def _one(self, request):
        ids = _input(request, "output_ids").reshape(-1).tolist()
        prev = _input(request, "prev_ids").reshape(-1).tolist()
        final = bool(_input(request, "is_final").reshape(-1)[0])
        text = self.tokenizer.decode_delta(prev, ids, final)
        trim = int(_scalar(request, "trim_bytes", 0))
        if final and trim > 0:
            # The engine cuts on the same token texts; a cut that would split a character
            # (only when the decoder repaired bytes, docs/request_fields.md) drops it whole.
            data = text.encode("utf-8")
            text = data[: max(0, len(data) - trim)].decode("utf-8", errors="ignore")
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
