// Random LoRA adapters in PEFT's layout for the serving tests and benchmarks (tests and bench/ only).
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <string>
#include <utility>

#include "absl/status/status.h"
#include "llmtrain/core/status.h"
#include "llmtrain/lora/lora.h"
#include "llmtrain/model/decoder.h"

namespace llmtrain::testing {

// Saves two adapters of `model` as dir/a and dir/b: "a" r 8, alpha 16 on every projection; "b"
// r 4, alpha 8 on q/k/v/o, rsLoRA when `rslora_b`. lora_A is InjectLora's initialization and
// lora_B is drawn N(0, 0.04²), so that each adapter changes the model's answers; seeds 3 and 4.
// The model is left without adapters.
inline absl::Status SaveRandomAdapters(model::Decoder* model, const std::string& dir, bool rslora_b) {
  lora::LoraConfig a;
  a.r = 8;
  a.alpha = 16;
  a.target_modules = {"all-linear"};
  lora::LoraConfig b;
  b.r = 4;
  b.alpha = 8;
  b.use_rslora = rslora_b;
  b.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj"};
  int seed = 3;
  for (auto [name, config] : {std::pair{"a", a}, std::pair{"b", b}}) {
    at::manual_seed(seed++);
    LLMTRAIN_RETURN_IF_ERROR(lora::InjectLora(model, config).status());
    {
      at::NoGradGuard no_grad;
      for (auto& [module, layer] : lora::Adapters(*model)) {
        layer->lora_B().copy_(at::randn(layer->lora_B().sizes()) * 0.04);
      }
    }
    LLMTRAIN_RETURN_IF_ERROR(lora::SaveAdapter(*model, config, dir + "/" + name));
    lora::RemoveAdapters(model);
  }
  return absl::OkStatus();
}

}  // namespace llmtrain::testing
