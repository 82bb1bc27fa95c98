// llmtrain make-vlm --text PATH --output DIR [--image-size 224] [--patch-size 14] [--tower-layers 2]
//                   [--tower-hidden 128] [--tower-heads 4] [--tower-intermediate 512]
//                   [--tokens-per-image 16] [--seed 0]
// A Gemma 3 image+text folder (Gemma3ForConditionalGeneration) from a real Gemma 3 text model
// and a new, small, randomly initialized SigLIP tower and projector: what a CPU can fine-tune on
// images when no vision weights ship on the machine. transformers loads the folder.
#include <ATen/ATen.h>

#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "llmtrain/commands.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/core/status.h"
#include "llmtrain/io/safetensors.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"

namespace llmtrain::cli {
namespace {

constexpr char kHelp[] =
    "usage: llmtrain make-vlm --text PATH --output DIR [--image-size 224] [--patch-size 14]\n"
    "                         [--tower-layers 2] [--tower-hidden 128] [--tower-heads 4]\n"
    "                         [--tower-intermediate 512] [--tokens-per-image 16] [--seed 0]\n"
    "  PATH: a Gemma 3 text model (the 270M GGUF, or an HF folder). DIR gets config.json\n"
    "  (model_type gemma3, its text_config from PATH, a siglip_vision_model vision_config) and\n"
    "  model.safetensors in float32, in transformers 5.23's save layout: the text weights as they\n"
    "  are, a new SigLIP tower (weights ~ N(0, 0.02), LayerNorms 1 and 0) and projector (~ N(0, 0.02),\n"
    "  where transformers starts it at zero: so that pixels reach the decoder from the first step).\n"
    "  The image soft token is id vocab_size, outside the vocabulary, as the 270M's tokenizer adds it.\n";

struct Options {
  std::string text, output;
  int64_t image_size = 224, patch_size = 14, layers = 2, hidden = 128, heads = 4, intermediate = 512, tokens = 16;
  uint64_t seed = 0;
};

absl::Status MakeVlm(const Options& o) {
  if (o.image_size % o.patch_size != 0) return absl::InvalidArgumentError("--image-size must be a multiple of --patch-size");
  const int64_t grid = o.image_size / o.patch_size;
  int64_t side = 1;
  while (side * side < o.tokens) ++side;
  if (side * side != o.tokens || grid % side != 0) {
    return absl::InvalidArgumentError(absl::StrCat("--tokens-per-image ", o.tokens, " must be a square whose side divides ",
                                                   grid));
  }
  if (o.hidden % o.heads != 0) return absl::InvalidArgumentError("--tower-heads must divide --tower-hidden");
  LLMTRAIN_ASSIGN_OR_RETURN(auto text, model::Decoder::Load(o.text, {}));
  if (text->config().model_type != "gemma3_text") {
    return absl::InvalidArgumentError(absl::StrCat(o.text, ": a Gemma 3 text model is needed, found ", text->config().model_type));
  }
  LLMTRAIN_ASSIGN_OR_RETURN(auto tok, tokenizer::Tokenizer::Load(o.text));
  const auto boi = tok->TokenToId("<start_of_image>"), eoi = tok->TokenToId("<end_of_image>");
  if (!boi || !eoi) return absl::InvalidArgumentError(absl::StrCat(o.text, ": the vocabulary has no <start_of_image>"));
  const int64_t vocab = text->config().text.vocab_size, C = text->config().text.hidden_size;
  const int64_t image_token = tok->TokenToId("<image_soft_token>").value_or(tok->vocab_size());

  nlohmann::json text_config = nlohmann::json::parse(text->config().resolved_json);
  text_config.erase("dtype");
  const nlohmann::json config = {
      {"architectures", {"Gemma3ForConditionalGeneration"}},
      {"model_type", "gemma3"},
      {"text_config", text_config},
      {"vision_config",
       {{"model_type", "siglip_vision_model"}, {"hidden_size", o.hidden}, {"intermediate_size", o.intermediate},
        {"num_hidden_layers", o.layers}, {"num_attention_heads", o.heads}, {"num_channels", 3},
        {"image_size", o.image_size}, {"patch_size", o.patch_size}, {"hidden_act", "gelu_pytorch_tanh"},
        {"layer_norm_eps", 1e-6}, {"attention_dropout", 0.0}, {"vision_use_head", false}}},
      {"mm_tokens_per_image", o.tokens},
      {"boi_token_index", *boi},
      {"eoi_token_index", *eoi},
      {"image_token_index", image_token},
      {"tie_word_embeddings", true},
      {"dtype", "float32"}};
  LLMTRAIN_RETURN_IF_ERROR(MakeDirectories(o.output));
  LLMTRAIN_RETURN_IF_ERROR(WriteFileAtomically(o.output + "/config.json", config.dump(2) + "\n"));

  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& [name, t] : text->named_parameters()) {
    // model.X → language_model.model.X (5.23's save layout); the tied head is not saved.
    if (name.rfind("model.", 0) != 0) continue;
    tensors.emplace_back("language_model.model." + name.substr(6), t.detach().to(at::kFloat).contiguous());
  }
  at::Generator g = at::detail::createCPUGenerator(o.seed);
  const auto normal = [&](std::vector<int64_t> shape) { return at::normal(0.0, 0.02, shape, g).contiguous(); };
  const int64_t H = o.hidden;
  const std::string tower = "vision_tower.";
  tensors.emplace_back(tower + "embeddings.patch_embedding.weight", normal({H, 3, o.patch_size, o.patch_size}));
  tensors.emplace_back(tower + "embeddings.patch_embedding.bias", at::zeros({H}));
  tensors.emplace_back(tower + "embeddings.position_embedding.weight", normal({grid * grid, H}));
  for (int64_t i = 0; i < o.layers; ++i) {
    const std::string l = absl::StrCat(tower, "encoder.layers.", i, ".");
    for (const char* n : {"layer_norm1", "layer_norm2"}) {
      tensors.emplace_back(l + n + ".weight", at::ones({H}));
      tensors.emplace_back(l + n + ".bias", at::zeros({H}));
    }
    for (const char* p : {"self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj", "self_attn.out_proj"}) {
      tensors.emplace_back(l + p + ".weight", normal({H, H}));
      tensors.emplace_back(l + p + ".bias", at::zeros({H}));
    }
    tensors.emplace_back(l + "mlp.fc1.weight", normal({o.intermediate, H}));
    tensors.emplace_back(l + "mlp.fc1.bias", at::zeros({o.intermediate}));
    tensors.emplace_back(l + "mlp.fc2.weight", normal({H, o.intermediate}));
    tensors.emplace_back(l + "mlp.fc2.bias", at::zeros({H}));
  }
  tensors.emplace_back(tower + "post_layernorm.weight", at::ones({H}));
  tensors.emplace_back(tower + "post_layernorm.bias", at::zeros({H}));
  tensors.emplace_back("multi_modal_projector.mm_input_projection_weight", normal({H, C}));
  tensors.emplace_back("multi_modal_projector.mm_soft_emb_norm.weight", at::zeros({H}));
  std::vector<io::TensorToWrite> out;
  for (const auto& [name, t] : tensors) {
    io::TensorToWrite w;
    w.name = name;
    w.dtype = Dtype::kF32;
    w.shape = t.sizes().vec();
    w.data = absl::Span<const uint8_t>(static_cast<const uint8_t*>(t.data_ptr()), static_cast<size_t>(t.nbytes()));
    out.push_back(std::move(w));
  }
  LLMTRAIN_RETURN_IF_ERROR(io::WriteSafetensors(o.output + "/model.safetensors", out, {{"format", "pt"}}));
  std::printf("%s: Gemma 3 image+text, the text model of %s (%lld layers, vocabulary %lld) and a new SigLIP tower "
              "(%lld layers, %lld wide, %lldx%lld pixels, %lld tokens per image); image token id %lld\n",
              o.output.c_str(), o.text.c_str(), static_cast<long long>(text->num_layers()), static_cast<long long>(vocab),
              static_cast<long long>(o.layers), static_cast<long long>(H), static_cast<long long>(o.image_size),
              static_cast<long long>(o.image_size), static_cast<long long>(o.tokens), static_cast<long long>(image_token));
  return absl::OkStatus();
}

}  // namespace

int RunMakeVlm(const std::vector<std::string>& args) {
  Options o;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kHelp, stdout);
      return 0;
    }
    if (i + 1 >= args.size()) return Fail("make-vlm", absl::StrCat(a, " needs a value\n", kHelp), 2);
    const std::string& v = args[++i];
    int64_t* number = a == "--image-size"           ? &o.image_size
                      : a == "--patch-size"         ? &o.patch_size
                      : a == "--tower-layers"       ? &o.layers
                      : a == "--tower-hidden"       ? &o.hidden
                      : a == "--tower-heads"        ? &o.heads
                      : a == "--tower-intermediate" ? &o.intermediate
                      : a == "--tokens-per-image"   ? &o.tokens
                                                    : nullptr;
    if (a == "--text") {
      o.text = v;
    } else if (a == "--output") {
      o.output = v;
    } else if (a == "--seed") {
      if (!absl::SimpleAtoi(v, &o.seed)) return Fail("make-vlm", "--seed: expected an integer", 2);
    } else if (number != nullptr) {
      if (!absl::SimpleAtoi(v, number) || *number < 1 || *number > 65536) {
        return Fail("make-vlm", absl::StrCat(a, ": expected an integer in [1, 65536], found ", v), 2);
      }
    } else {
      return Fail("make-vlm", absl::StrCat("unknown option ", a, "\n", kHelp), 2);
    }
  }
  if (o.text.empty() || o.output.empty()) return Fail("make-vlm", absl::StrCat("--text and --output are required\n", kHelp), 2);
  try {
    const absl::Status status = MakeVlm(o);
    if (!status.ok()) return Fail("make-vlm", std::string(status.message()));
  } catch (...) {
    return Fail("make-vlm", std::string(StatusFromCurrentException("make-vlm").message()));
  }
  return 0;
}

}  // namespace llmtrain::cli
