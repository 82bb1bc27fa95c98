// QLoRA fine-tuning of a Qwen2 / Qwen2.5 / Qwen3 model, assembled from the library's components
// (examples/finetune_common.h) with the values of a run spec.
//
//   build/bin/qwen_finetune examples/specs/qwen2_5_14b_qlora.textproto model.path=/models/Qwen2.5-14B
#include <cstdio>

#include "finetune_common.h"

int main(int argc, char** argv) {
  return llmtrain::examples::RunQloraRecipe(
      argc, argv, {"qwen2", "qwen3"}, [](const llmtrain::model::Decoder& model) {
        // What makes Qwen differ from the shared decoder, as the loaded config resolved it.
        const llmtrain::model::FamilySpec& spec = model.spec();
        std::printf("[5] qwen: w · x̂ norms (eps %g), q/k/v biases %s, QK-norm %s, %s embeddings\n",
                    model.config().text.rms_norm_eps, spec.qkv_bias ? "yes" : "no", spec.qk_norm ? "yes" : "no",
                    spec.tied_embeddings ? "tied" : "untied");
      });
}
