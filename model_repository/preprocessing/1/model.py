"""Triton Python model `preprocessing`: text (+ history) -> prompt ids.

Builds the chat prompt with glmserve.tokenizer.ChatGLMTokenizer.build_prompt,
encodes it ([gMASK] <sop> appended), validates every sampling input and fills
in the defaults, so that chatglm_decoder always receives complete inputs.
A bad request gets an INVALID_ARG error naming the field and the allowed
range; the other requests of the batch are unaffected.
"""

import json
import math
import os

import numpy as np
import triton_python_backend_utils as pb_utils

from glmserve.tokenizer import ChatGLMTokenizer


class InvalidArg(ValueError):
    pass


def _checkpoint_dir(args, params):
    ckpt = os.environ.get("GLM_CHECKPOINT_DIR") or params.get("checkpoint_dir", "")
    if not ckpt:
        raise pb_utils.TritonModelException(
            "preprocessing: no checkpoint_dir parameter and no GLM_CHECKPOINT_DIR"
        )
    if not os.path.isabs(ckpt):
        model_dir = os.path.join(args["model_repository"])
        ckpt = os.path.normpath(os.path.join(model_dir, ckpt))
    return ckpt


def _params(cfg):
    return {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}


def _scalar(request, name, dtype):
    t = pb_utils.get_input_tensor_by_name(request, name)
    if t is None:
        return None
    a = t.as_numpy()
    if a.size != 1:
        raise InvalidArg(f"{name}: expected a single value, got shape {list(a.shape)}")
    if a.dtype != dtype:
        raise InvalidArg(f"{name}: expected {np.dtype(dtype).name}, got {a.dtype.name}")
    return a.reshape(-1)[0]


def _text(request, name, required):
    t = pb_utils.get_input_tensor_by_name(request, name)
    if t is None:
        if required:
            raise InvalidArg(f"{name}: required input is missing")
        return None
    a = t.as_numpy()
    if a.size != 1:
        raise InvalidArg(f"{name}: expected one string, got shape {list(a.shape)}")
    v = a.reshape(-1)[0]
    if isinstance(v, str):
        return v
    try:
        return bytes(v).decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidArg(f"{name}: not valid UTF-8 ({e.reason} at byte {e.start})") from None


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
        self.context = 2048
        cfg_path = os.path.join(ckpt, "config.json")
        if os.path.isfile(cfg_path):
            with open(cfg_path, encoding="utf-8") as f:
                self.context = int(json.load(f).get("max_sequence_length", 2048))
        self.default_max_tokens = int(params.get("default_max_tokens") or 128)
        self.max_prompt_bytes = int(params.get("max_prompt_bytes") or 65536)
        self.checkpoint_dir = ckpt

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except InvalidArg as e:
                err = pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=err))
            except Exception as e:  # noqa: BLE001 - one bad request must not fail the batch
                err = pb_utils.TritonError(f"preprocessing: {type(e).__name__}: {e}")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=err))
        return responses

    def _history(self, request):
        raw = _text(request, "history", required=False)
        if raw is None or raw.strip() == "":
            return []
        try:
            hist = json.loads(raw)
        except json.JSONDecodeError as e:
            raise InvalidArg(
                f"history: not valid JSON ({e.msg}); expected a list of [question, answer] pairs"
            ) from None
        ok = isinstance(hist, list) and all(
            isinstance(p, (list, tuple))
            and len(p) == 2
            and isinstance(p[0], str)
            and isinstance(p[1], str)
            for p in hist
        )
        if not ok:
            raise InvalidArg("history: expected a JSON list of [question, answer] string pairs")
        return [(q, a) for q, a in hist]

    def _one(self, request):
        text = _text(request, "text_input", required=True)
        history = self._history(request)
        size = len(text.encode("utf-8")) + sum(
            len(q.encode("utf-8")) + len(a.encode("utf-8")) for q, a in history
        )
        if size > self.max_prompt_bytes:
            raise InvalidArg(
                f"text_input: prompt of {size} bytes (with history) is over the limit of "
                f"{self.max_prompt_bytes} bytes"
            )
        prompt = ChatGLMTokenizer.build_prompt(text, history)
        ids = self.tokenizer.encode(prompt)
        n = len(ids)
        room = self.context - n
        if room < 1:
            raise InvalidArg(
                f"text_input: prompt of {n} tokens leaves no room in the context of "
                f"{self.context} tokens (allowed prompt length: [1, {self.context - 1}])"
            )

        max_tokens = _scalar(request, "max_tokens", np.int32)
        if max_tokens is None:
            max_tokens = min(self.default_max_tokens, room)
        else:
            max_tokens = int(max_tokens)
            if max_tokens < 1 or max_tokens > self.context:
                raise InvalidArg(f"max_tokens: {max_tokens} is out of range [1, {self.context}]")
            if max_tokens > room:
                raise InvalidArg(
                    f"max_tokens: prompt of {n} tokens + max_tokens {max_tokens} exceeds the "
                    f"context of {self.context} tokens (allowed for this prompt: [1, {room}])"
                )
        temperature = _scalar(request, "temperature", np.float32)
        temperature = 0.0 if temperature is None else float(temperature)
        if not math.isfinite(temperature) or temperature < 0:
            raise InvalidArg(
                f"temperature: {temperature} is out of range: need a finite number >= 0 "
                "(0 = greedy)"
            )
        top_k = _scalar(request, "top_k", np.int32)
        top_k = 0 if top_k is None else int(top_k)
        if top_k < 0:
            raise InvalidArg(f"top_k: {top_k} is out of range: need >= 0 (0 = off)")
        top_p = _scalar(request, "top_p", np.float32)
        top_p = 1.0 if top_p is None else float(top_p)
        if not math.isfinite(top_p) or not 0.0 < top_p <= 1.0:
            raise InvalidArg(f"top_p: {top_p} is out of range (0, 1]")
        rep = _scalar(request, "repetition_penalty", np.float32)
        rep = 1.0 if rep is None else float(rep)
        if not math.isfinite(rep) or rep <= 0:
            raise InvalidArg(
                f"repetition_penalty: {rep} is out of range: need a finite number > 0 (1 = off)"
            )
        seed = _scalar(request, "random_seed", np.uint64)
        seed = 0 if seed is None else int(seed)
        stream = _scalar(request, "stream", np.bool_)
        stream = False if stream is None else bool(stream)
        ignore_eos = _scalar(request, "ignore_eos", np.bool_)
        ignore_eos = False if ignore_eos is None else bool(ignore_eos)

        outs = [
            pb_utils.Tensor("input_ids", np.asarray([ids], dtype=np.int32)),
            pb_utils.Tensor("out_max_tokens", np.asarray([[max_tokens]], dtype=np.int32)),
            pb_utils.Tensor("out_temperature", np.asarray([[temperature]], dtype=np.float32)),
            pb_utils.Tensor("out_top_k", np.asarray([[top_k]], dtype=np.int32)),
            pb_utils.Tensor("out_top_p", np.asarray([[top_p]], dtype=np.float32)),
            pb_utils.Tensor("out_repetition_penalty", np.asarray([[rep]], dtype=np.float32)),
            pb_utils.Tensor("out_random_seed", np.asarray([[seed]], dtype=np.uint64)),
            pb_utils.Tensor("out_stream", np.asarray([[stream]], dtype=np.bool_)),
            pb_utils.Tensor("out_ignore_eos", np.asarray([[ignore_eos]], dtype=np.bool_)),
        ]
        return pb_utils.InferenceResponse(output_tensors=outs)
