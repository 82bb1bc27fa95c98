// QLoRA fine-tuning of a Gemma 2 / Gemma 3 (text) model, assembled from the library's components
// (examples/finetune_common.h) with the values of a run spec.
//
//   build/bin/gemma_finetune examples/specs/gemma3_270m_cpu.textproto
//   build/bin/gemma_finetune examples/specs/gemma2_2b_3x24gb.textproto model.path=/models/gemma-2-2b
#include <cstdio>

#include "finetune_common.h"

int main(int argc, char** argv) {
  return llmtrain::examples::RunQloraRecipe(
      argc, argv, {"gemma3_text", "gemma2"}, [](const llmtrain::model::Decoder& model) {
        // What makes Gemma differ from the shared decoder, as the loaded config resolved it.
        const llmtrain::model::FamilySpec& spec = model.spec();
        int sliding = 0;
        for (const bool s : spec.sliding) sliding += s;
        std::printf("[5] gemma: (1 + w) norms around attention and MLP, embeddings × sqrt(%lld), "
                    "%d of %zu layers slide over %lld keys%s%s\n",
                    static_cast<long long>(model.config().text.hidden_size), sliding, spec.sliding.size(),
                    static_cast<long long>(spec.window), spec.qk_norm ? ", QK-norm" : "",
                    spec.final_softcap ? ", soft-capped logits" : "");
      });
}
