// QLoRA fine-tuning of a Gemma 3 image+text model (Gemma3ForConditionalGeneration) on image-caption
// data, assembled from the library's components (examples/finetune_common.h: the same recipe as
// the text models, whose collator step also decodes and preprocesses the images) with the values
// of a run spec. On a CPU, with what this machine has:
//
//   build/bin/llmtrain make-default-dataset --vlm --output build/vlm/data
//   build/bin/llmtrain make-vlm --text .venv/models/gemma-3-270m-q4_k_m.gguf --output build/vlm/model
//   build/bin/gemma3_vlm_finetune examples/specs/gemma3_vlm_cpu.textproto
//
// (the real Gemma 3 270M decoder with a small new SigLIP tower; google/gemma-3-4b-it and larger
// load the same way, with their own preprocessor_config.json).
#include <cstdio>
#include <stdexcept>
#include <string>

#include "finetune_common.h"

int main(int argc, char** argv) {
  return llmtrain::examples::RunQloraRecipe(argc, argv, {"gemma3_text"}, [](const llmtrain::model::Decoder& model) {
    if (!model.has_vision()) {
      throw std::runtime_error("model.path: this program fine-tunes image+text models; the model has no vision "
                               "tower (use gemma_finetune for text models)");
    }
    const llmtrain::io::VisionConfig& v = *model.config().vision;
    int64_t tower_linears = 0;
    for (const std::string& name : model.LinearNames()) tower_linears += name.rfind("model.vision_tower.", 0) == 0;
    std::printf("[5] vision: SigLIP tower of %lld layers, %lld wide, %lldx%lld pixels in %lldx%lld patches, "
                "%lld projections; %lld tokens per image (id %lld), bidirectional within each image\n",
                static_cast<long long>(v.num_hidden_layers), static_cast<long long>(v.hidden_size),
                static_cast<long long>(v.image_size), static_cast<long long>(v.image_size),
                static_cast<long long>(v.patch_size), static_cast<long long>(v.patch_size),
                static_cast<long long>(tower_linears), static_cast<long long>(model.tokens_per_image()),
                static_cast<long long>(model.image_token_id()));
  });
}
