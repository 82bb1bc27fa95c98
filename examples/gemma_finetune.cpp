// QLoRA fine-tuning of a Gemma 2 / Gemma 3 model from a run spec, through the library's API.
//
//   build/bin/gemma_finetune examples/specs/gemma3_270m_cpu.textproto
//   build/bin/gemma_finetune examples/specs/gemma2_2b_3x24gb.textproto model.path=/models/gemma-2-2b
#include "finetune_common.h"

int main(int argc, char** argv) {
  // The spec names the exact family (gemma2 or gemma3_text); "gemma3_text" is the default check.
  return llmtrain::examples::RunFinetune(argc, argv, "gemma3_text");
}
