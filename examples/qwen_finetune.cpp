// QLoRA fine-tuning of a Qwen2.5 (qwen2) model from a run spec, through the library's API.
//
//   build/bin/qwen_finetune examples/specs/qwen2_5_14b_qlora.textproto model.path=/models/Qwen2.5-14B
#include "finetune_common.h"

int main(int argc, char** argv) { return llmtrain::examples::RunFinetune(argc, argv, "qwen2"); }
