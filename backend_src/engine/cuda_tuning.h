// EngineOptions::cuda (CudaTuning, engine.h) by name, for whoever sets the fields
// from text or keywords: the Triton decoder config (parameters "cuda_<name>") and
// the Python module (keywords "cuda_<name>"). Kept out of engine.h: nvcc's host
// code does not take member pointers there without warnings.
#pragma once

#include <string>
#include <vector>

#include "engine.h"

namespace glm {

// One field. Exactly one of flag / number is set.
struct CudaTuningField {
  const char* name;         // the member's name, e.g. "rotary_fp16"
  bool CudaTuning::*flag;   // a yes/no field, or
  int CudaTuning::*number;  // an integer field in [min, max]
  int min, max;
  const char* help;         // one line
  std::vector<int> choices = {};  // a number field's only values (within [min, max]); empty: any
};
const std::vector<CudaTuningField>& cuda_tuning_fields();

// Sets the field `name` from text: true/false/1/0/yes/no/on/off (any case) for
// flags, a decimal integer in range (and among its choices, if any) for numbers.
// Throws EngineError naming the field.
void set_cuda_tuning(CudaTuning& tuning, const std::string& name, const std::string& value);

}  // namespace glm
