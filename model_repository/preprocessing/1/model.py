"""Triton Python model `preprocessing`: text (+ history) -> prompt ids.

Reads the ensemble's request fields as the request contract (glmserve/contract.py)
describes them: type, shape and range checks and defaults come from that table.
Builds the chat prompt with glmserve.tokenizer.ChatGLMTokenizer.build_prompt,
encodes it ([gMASK] <sop> appended) and forwards the decoder's fields with their
defaults filled in, so that chatglm_decoder always receives complete inputs.
A bad request gets an INVALID_ARG error naming the field; the other requests of
the batch are unaffected.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

from glmserve import contract
from glmserve.contract import DType, ErrorCode, RequestError
from glmserve.tokenizer import ChatGLMTokenizer


def _triton_error(e: RequestError):
    """The typed error as Triton's (pb_utils.TritonError exists only once the stub runs)."""
    code = {
        ErrorCode.INVALID_ARGUMENT: pb_utils.TritonError.INVALID_ARG,
        ErrorCode.UNAVAILABLE: pb_utils.TritonError.UNAVAILABLE,
        ErrorCode.INTERNAL: pb_utils.TritonError.INTERNAL,
    }[e.code]
    return pb_utils.TritonError(str(e), code)


def _checkpoint_dir(args, params):
    ckpt = os.environ.get("GLM_CHECKPOINT_DIR") or params.get("checkpoint_dir", "")
    if not ckpt:
        raise pb_utils.TritonModelException(
            "preprocessing: no checkpoint_dir parameter and no GLM_CHECKPOINT_DIR"
        )
    if not os.path.isabs(ckpt):
        ckpt = os.path.normpath(os.path.join(args["model_repository"], ckpt))
    return ckpt


def _params(cfg):
    return {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}


def parse_history(raw):
    """The ``history`` field's JSON text -> a list of (question, answer) pairs."""
    if raw is None or raw.strip() == "":
        return []
    try:
        hist = json.loads(raw)
    except json.JSONDecodeError as e:
        raise RequestError(
            "history", f"not valid JSON ({e.msg}); expected a list of [question, answer] pairs"
        ) from None
    ok = isinstance(hist, list) and all(
        isinstance(p, (list, tuple))
        and len(p) == 2
        and isinstance(p[0], str)
        and isinstance(p[1], str)
        for p in hist
    )
    if not ok:
        raise RequestError("history", "expected a JSON list of [question, answer] string pairs")
    return [(q, a) for q, a in hist]


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        params = _params(cfg)
        ckpt = _checkpoint_dir(args, params)
        spm = os.path.join(ckpt, "ice_text.model")
        if not os.path.isfile(spm):
            raise pb_utils.TritonModelException(
                f"preprocessing: no tokenizer at {spm}: this checkpoint is ids-only "
                "(serve chatglm_decoder alone)"
            )
        self.tokenizer = ChatGLMTokenizer(spm)
        self.context, vocab = 2048, None
        cfg_path = os.path.join(ckpt, "config.json")
        if os.path.isfile(cfg_path):
            with open(cfg_path, encoding="utf-8") as f:
                model_cfg = json.load(f)
            self.context = int(model_cfg.get("max_sequence_length", 2048))
            vocab = model_cfg.get("vocab_size")
        self.limits = contract.Limits(context=self.context, vocab=vocab)
        self.default_max_tokens = int(params.get("default_max_tokens") or 128)
        self.max_prompt_bytes = int(params.get("max_prompt_bytes") or 65536)
        self.batched = int(cfg.get("max_batch_size", 0)) > 0
        self.checkpoint_dir = ckpt

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except RequestError as e:
                responses.append(
                    pb_utils.InferenceResponse(output_tensors=[], error=_triton_error(e))
                )
            except Exception as e:  # noqa: BLE001 - one bad request must not fail the batch
                err = pb_utils.TritonError(f"preprocessing: {type(e).__name__}: {e}")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=err))
        return responses

    def _read(self, request):
        """Every field of the request that is present, checked (type, shape, range)."""
        values = {}
        for f in contract.fields_of(contract.PREPROCESSING):
            t = pb_utils.get_input_tensor_by_name(request, f.name)
            if t is None:
                if f.required:
                    raise RequestError(f.name, "required input is missing")
                continue
            values[f.name] = contract.from_array(f, t.as_numpy(), self.batched, self.limits)
        return values

    def _one(self, request):
        values = self._read(request)
        text = values["text_input"]
        history = parse_history(values.get("history"))
        size = len(text.encode("utf-8")) + sum(
            len(q.encode("utf-8")) + len(a.encode("utf-8")) for q, a in history
        )
        if size > self.max_prompt_bytes:
            raise RequestError(
                "text_input",
                f"prompt of {size} bytes (with history) is over the limit of "
                f"{self.max_prompt_bytes} bytes",
            )
        ids = self.tokenizer.encode(ChatGLMTokenizer.build_prompt(text, history))
        n = len(ids)
        room = self.context - n
        if room < 1:
            raise RequestError(
                "text_input",
                f"prompt of {n} tokens leaves no room in the context of {self.context} tokens "
                f"(allowed prompt length: [1, {self.context - 1}])",
            )
        if "max_tokens" not in values:
            values["max_tokens"] = min(self.default_max_tokens, room)
        elif values["max_tokens"] > room:
            raise RequestError(
                "max_tokens",
                f"prompt of {n} tokens + max_tokens {values['max_tokens']} exceeds the context "
                f"of {self.context} tokens (allowed for this prompt: [1, {room}])",
            )
        outs = [pb_utils.Tensor("input_ids", np.asarray([ids], dtype=np.int32))]
        for f in contract.forwarded():
            value = values.get(f.name, f.default)
            if f.dtype is DType.BYTES:
                value = [v.encode("utf-8") for v in value] if f.is_list else value.encode("utf-8")
            rows = [list(value)] if f.is_list else [[value]]
            outs.append(pb_utils.Tensor(f"out_{f.name}", np.asarray(rows, dtype=f.dtype.numpy)))
        return pb_utils.InferenceResponse(output_tensors=outs)
