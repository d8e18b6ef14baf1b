// GENERATED from glmserve/contract.py by `python -m glmserve.contract_gen --write`. Do not edit:
// edit the table there and regenerate; CI fails when this file is out of date.
#pragma once

#include "request_field.h"

namespace glm::fields {

// The user's message (UTF-8). With no history it is the whole prompt.
inline constexpr RequestField kTextInput{
    "text_input", FieldType::kBytes, /*is_list=*/false, /*max_items=*/0,
    /*required=*/true, /*has_min=*/false, /*min=*/0.0, /*min_exclusive=*/false,
    /*has_max=*/false, /*max=*/0.0, /*max_bound=*/MaxBound::kFixed, /*max_exclusive=*/false,
    /*max_bytes=*/0, /*requirement=*/"UTF-8 text",
    /*member=*/nullptr};

// Earlier turns: a JSON list of [question, answer] string pairs, e.g. [["hi", "hello"]].
inline constexpr RequestField kHistory{
    "history", FieldType::kBytes, /*is_list=*/false, /*max_items=*/0,
    /*required=*/false, /*has_min=*/false, /*min=*/0.0, /*min_exclusive=*/false,
    /*has_max=*/false, /*max=*/0.0, /*max_bound=*/MaxBound::kFixed, /*max_exclusive=*/false,
    /*max_bytes=*/0, /*requirement=*/"UTF-8 text",
    /*member=*/nullptr};

// The whole prompt's ids, ending with [gMASK] <sop> (the decoder's own input).
inline constexpr RequestField kInputIds{
    "input_ids", FieldType::kInt32, /*is_list=*/true, /*max_items=*/2147483647,
    /*required=*/true, /*has_min=*/false, /*min=*/0.0, /*min_exclusive=*/false,
    /*has_max=*/false, /*max=*/0.0, /*max_bound=*/MaxBound::kFixed, /*max_exclusive=*/false,
    /*max_bytes=*/0, /*requirement=*/"an integer",
    /*member=*/nullptr};

// How many tokens to generate at most. Default: the model parameter default_max_tokens (128), capped by the room the prompt leaves in the context.
inline constexpr RequestField kMaxTokens{
    "max_tokens", FieldType::kInt32, /*is_list=*/false, /*max_items=*/0,
    /*required=*/false, /*has_min=*/true, /*min=*/1.0, /*min_exclusive=*/false,
    /*has_max=*/true, /*max=*/0.0, /*max_bound=*/MaxBound::kContext, /*max_exclusive=*/false,
    /*max_bytes=*/0, /*requirement=*/"in [1, {context}]",
    /*member=*/"max_tokens"};

// Sampling temperature; 0 decodes greedily.
inline constexpr RequestField kTemperature{
    "temperature", FieldType::kFp32, /*is_list=*/false, /*max_items=*/0,
    /*required=*/false, /*has_min=*/true, /*min=*/0.0, /*min_exclusive=*/false,
    /*has_max=*/false, /*max=*/0.0, /*max_bound=*/MaxBound::kFixed, /*max_exclusive=*/false,
    /*max_bytes=*/0, /*requirement=*/"a finite number >= 0 (0 = greedy)",
    /*member=*/"temperature"};

// Keep only the k most likely tokens before sampling.
inline constexpr RequestField kTopK{
    "top_k", FieldType::kInt32, /*is_list=*/false, /*max_items=*/0,
    /*required=*/false, /*has_min=*/true, /*min=*/0.0, /*min_exclusive=*/false,
    /*has_max=*/false, /*max=*/0.0, /*max_bound=*/MaxBound::kFixed, /*max_exclusive=*/false,
    /*max_bytes=*/0, /*requirement=*/">= 0 (0 = off)",
    /*member=*/"top_k"};

// Nucleus sampling: keep the most likely tokens whose mass reaches top_p.
inline constexpr RequestField kTopP{
    "top_p", FieldType::kFp32, /*is_list=*/false, /*max_items=*/0,
    /*required=*/false, /*has_min=*/true, /*min=*/0.0, /*min_exclusive=*/true,
    /*has_max=*/true, /*max=*/1.0, /*max_bound=*/MaxBound::kFixed, /*max_exclusive=*/false,
    /*max_bytes=*/0, /*requirement=*/"in (0, 1] (1 = off)",
    /*member=*/"top_p"};

// Hugging Face's repetition penalty over prompt and generated ids.
inline constexpr RequestField kRepetitionPenalty{
    "repetition_penalty", FieldType::kFp32, /*is_list=*/false, /*max_items=*/0,
    /*required=*/false, /*has_min=*/true, /*min=*/0.0, /*min_exclusive=*/true,
    /*has_max=*/false, /*max=*/0.0, /*max_bound=*/MaxBound::kFixed, /*max_exclusive=*/false,
    /*max_bytes=*/0, /*requirement=*/"a finite number > 0 (1 = off)",
    /*member=*/"repetition_penalty"};

// OpenAI's presence penalty: subtracted once from the logit of every id generated so far.
inline constexpr RequestField kPresencePenalty{
    "presence_penalty", FieldType::kFp32, /*is_list=*/false, /*max_items=*/0,
    /*required=*/false, /*has_min=*/true, /*min=*/-2.0, /*min_exclusive=*/false,
    /*has_max=*/true, /*max=*/2.0, /*max_bound=*/MaxBound::kFixed, /*max_exclusive=*/false,
    /*max_bytes=*/0, /*requirement=*/"in [-2, 2] (0 = off)",
    /*member=*/"presence_penalty"};

// OpenAI's frequency penalty: subtracted from an id's logit once per time it was generated.
inline constexpr RequestField kFrequencyPenalty{
    "frequency_penalty", FieldType::kFp32, /*is_list=*/false, /*max_items=*/0,
    /*required=*/false, /*has_min=*/true, /*min=*/-2.0, /*min_exclusive=*/false,
    /*has_max=*/true, /*max=*/2.0, /*max_bound=*/MaxBound::kFixed, /*max_exclusive=*/false,
    /*max_bytes=*/0, /*requirement=*/"in [-2, 2] (0 = off)",
    /*member=*/"frequency_penalty"};

// Seed of the request's own random stream: the same seed gives the same tokens, whatever else is batched.
inline constexpr RequestField kRandomSeed{
    "random_seed", FieldType::kUint64, /*is_list=*/false, /*max_items=*/0,
    /*required=*/false, /*has_min=*/false, /*min=*/0.0, /*min_exclusive=*/false,
    /*has_max=*/false, /*max=*/0.0, /*max_bound=*/MaxBound::kFixed, /*max_exclusive=*/false,
    /*max_bytes=*/0, /*requirement=*/"an integer in [0, 2**64)",
    /*member=*/"seed"};

// Stream: one response per generated piece (false: one response with the whole text).
inline constexpr RequestField kStream{
    "stream", FieldType::kBool, /*is_list=*/false, /*max_items=*/0,
    /*required=*/false, /*has_min=*/false, /*min=*/0.0, /*min_exclusive=*/false,
    /*has_max=*/false, /*max=*/0.0, /*max_bound=*/MaxBound::kFixed, /*max_exclusive=*/false,
    /*max_bytes=*/0, /*requirement=*/"true or false",
    /*member=*/nullptr};

// Keep generating past <eop> until max_tokens.
inline constexpr RequestField kIgnoreEos{
    "ignore_eos", FieldType::kBool, /*is_list=*/false, /*max_items=*/0,
    /*required=*/false, /*has_min=*/false, /*min=*/0.0, /*min_exclusive=*/false,
    /*has_max=*/false, /*max=*/0.0, /*max_bound=*/MaxBound::kFixed, /*max_exclusive=*/false,
    /*max_bytes=*/0, /*requirement=*/"true or false",
    /*member=*/"ignore_eos"};

// How many choices to generate for the prompt (one prefill; the prompt's KV blocks are shared). Choice i draws from random_seed + i: the ids of a single request with that seed on the CPU, on the GPU up to fp16 rounding (choices after the first feed <sop> in a decode step, and a near-tied draw can fall the other way). Needs temperature > 0.
inline constexpr RequestField kN{
    "n", FieldType::kInt32, /*is_list=*/false, /*max_items=*/0,
    /*required=*/false, /*has_min=*/true, /*min=*/1.0, /*min_exclusive=*/false,
    /*has_max=*/true, /*max=*/16.0, /*max_bound=*/MaxBound::kFixed, /*max_exclusive=*/false,
    /*max_bytes=*/0, /*requirement=*/"in [1, 16]",
    /*member=*/"n"};

// Return each generated token's log-probability and those of this many most likely alternatives (log-softmax of the raw logits, before penalties and temperature).
inline constexpr RequestField kLogprobs{
    "logprobs", FieldType::kInt32, /*is_list=*/false, /*max_items=*/0,
    /*required=*/false, /*has_min=*/true, /*min=*/-1.0, /*min_exclusive=*/false,
    /*has_max=*/true, /*max=*/20.0, /*max_bound=*/MaxBound::kFixed, /*max_exclusive=*/false,
    /*max_bytes=*/0, /*requirement=*/"in [-1, 20] (-1 = off)",
    /*member=*/"logprobs"};

// Stop strings: generation ends as soon as the generated text contains one; the text ends before it.
inline constexpr RequestField kStop{
    "stop", FieldType::kBytes, /*is_list=*/true, /*max_items=*/16,
    /*required=*/false, /*has_min=*/false, /*min=*/0.0, /*min_exclusive=*/false,
    /*has_max=*/false, /*max=*/0.0, /*max_bound=*/MaxBound::kFixed, /*max_exclusive=*/false,
    /*max_bytes=*/256, /*requirement=*/"UTF-8 text",
    /*member=*/"stop"};

// Stop ids: generation ends at the first of these ids; its text is left out.
inline constexpr RequestField kStopTokenIds{
    "stop_token_ids", FieldType::kInt32, /*is_list=*/true, /*max_items=*/64,
    /*required=*/false, /*has_min=*/true, /*min=*/0.0, /*min_exclusive=*/false,
    /*has_max=*/true, /*max=*/0.0, /*max_bound=*/MaxBound::kVocab, /*max_exclusive=*/true,
    /*max_bytes=*/0, /*requirement=*/"in [0, {vocab})",
    /*member=*/"stop_token_ids"};

// The adapter to run with: a P-Tuning v2 prefix the server loaded at start (docs/adapters.md); empty: the base model.
inline constexpr RequestField kAdapter{
    "adapter", FieldType::kBytes, /*is_list=*/false, /*max_items=*/0,
    /*required=*/false, /*has_min=*/false, /*min=*/0.0, /*min_exclusive=*/false,
    /*has_max=*/false, /*max=*/0.0, /*max_bound=*/MaxBound::kFixed, /*max_exclusive=*/false,
    /*max_bytes=*/64, /*requirement=*/"UTF-8 text",
    /*member=*/"adapter"};

// Keep the stop string (or the stop id's text) at the end of the text.
inline constexpr RequestField kIncludeStopStrInOutput{
    "include_stop_str_in_output", FieldType::kBool, /*is_list=*/false, /*max_items=*/0,
    /*required=*/false, /*has_min=*/false, /*min=*/0.0, /*min_exclusive=*/false,
    /*has_max=*/false, /*max=*/0.0, /*max_bound=*/MaxBound::kFixed, /*max_exclusive=*/false,
    /*max_bytes=*/0, /*requirement=*/"true or false",
    /*member=*/"include_stop_str_in_output"};

// The decoder's inputs, in table order.
inline constexpr const RequestField* kDecoderInputs[] = {&kInputIds, &kMaxTokens, &kTemperature, &kTopK, &kTopP, &kRepetitionPenalty, &kPresencePenalty, &kFrequencyPenalty, &kRandomSeed, &kStream, &kIgnoreEos, &kN, &kLogprobs, &kStop, &kStopTokenIds, &kAdapter, &kIncludeStopStrInOutput};

}  // namespace glm::fields

namespace glm {

// Calls f(field, member) for every decoder field that sets a SamplingParams member,
// in table order (Params is SamplingParams or const SamplingParams).
template <class Params, class F>
void for_each_sampling_field(Params& p, F&& f) {
  f(fields::kMaxTokens, p.max_tokens);
  f(fields::kTemperature, p.temperature);
  f(fields::kTopK, p.top_k);
  f(fields::kTopP, p.top_p);
  f(fields::kRepetitionPenalty, p.repetition_penalty);
  f(fields::kPresencePenalty, p.presence_penalty);
  f(fields::kFrequencyPenalty, p.frequency_penalty);
  f(fields::kRandomSeed, p.seed);
  f(fields::kIgnoreEos, p.ignore_eos);
  f(fields::kN, p.n);
  f(fields::kLogprobs, p.logprobs);
  f(fields::kStop, p.stop);
  f(fields::kStopTokenIds, p.stop_token_ids);
  f(fields::kAdapter, p.adapter);
  f(fields::kIncludeStopStrInOutput, p.include_stop_str_in_output);
}

}  // namespace glm
