// llmtrain: the command-line front end of the library.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "llmtrain/commands.h"

namespace {

constexpr char kUsage[] =
    "usage: llmtrain <command> [args]\n"
    "\n"
    "commands:\n"
    "  inspect PATH [--json]      format, metadata, model config and tensors of a .safetensors\n"
    "                             file, a sharded index, a model folder or a .gguf\n"
    "  convert IN OUT.safetensors [--dtype f32|bf16|f16]\n"
    "                             dequantize or cast every tensor of IN into safetensors\n"
    "  forward --model PATH --input IN.safetensors --output OUT.safetensors\n"
    "          [--dtype f32|bf16|f16]\n"
    "                             logits of the decoder for input_ids (and attention_mask)\n"
    "  generate --model PATH (--prompt TEXT [--chat] | --input-ids JSON) [--max-new-tokens N]\n"
    "           [--temperature T] [--top-k K] [--top-p P] [--repetition-penalty R] [--seed S]\n"
    "           [--dtype f32|bf16|f16] [--json]\n"
    "                             new tokens with the KV cache, streamed as produced\n"
    "  preprocess-images (--processor PATH | --size S) --output OUT.safetensors IMAGE...\n"
    "                             pixel_values of image files as Gemma 3's image processor\n"
    "                             makes them\n"
    "  (forward and generate also take --load-in-4bit [--quant-type nf4|fp4] and --adapter DIR)\n"
    "  tokenize --tokenizer PATH [--no-special] [--chat] [--add-generation-prompt]\n"
    "           [--decode [--skip-special-tokens]]\n"
    "                             JSONL on stdin: token ids of each text or conversation, or the\n"
    "                             text of each list of ids (--decode)\n"
    "  data-check --data FILE [--data FILE ...]\n"
    "             [--format auto|dolly|alpaca|messages|sharegpt|text|captions]\n"
    "             [--tokenizer PATH] [--max-length N] [--max-bad-fraction 0.01] [--json]\n"
    "                             format, counts, bad records and token lengths of training data\n"
    "  quantize --model PATH --output DIR [--method nf4|fp4|int8] [--blocksize 64]\n"
    "           [--double-quant] [--dtype f32|bf16|f16]\n"
    "                             a bitsandbytes-format folder that transformers loads 4/8-bit\n"
    "  merge --model PATH --adapter DIR --output DIR [--dtype f32|bf16|f16]\n"
    "        [--requantize nf4|fp4] [--load-in-4bit]\n"
    "                             a PEFT LoRA adapter merged into its base\n"
    "  train --spec FILE [--set path=value ...] [--resume] [--stop-at-step N]\n"
    "                             the fine-tune a run spec describes (checkpoints, metrics)\n"
    "  sweep --spec FILE --space SPACE --output DIR [--set path=value ...] [--trials N]\n"
    "        [--parallel P] [--method grid|random|asha] [--seed S] [--dry-run]\n"
    "                             a hyperparameter search: trials as processes, successive\n"
    "                             halving, resumable, a leaderboard\n"
    "  export --model PATH --output OUT.gguf [--type f32|f16|bf16|q8_0|q4_0] [--adapter DIR]\n"
    "         [--load-in-4bit] [--vocab FILE.gguf] [--name NAME]\n"
    "                             the model with its adapter merged as a GGUF (llama.cpp,\n"
    "                             Ollama)\n"
    "  serve --model PATH [--adapter NAME=DIR ...] [--port 8000] [--max-batch 16]\n"
    "                             an OpenAI-compatible HTTP server (completions, chat, streaming)\n"
    "                             batching concurrent requests, one LoRA adapter per request\n"
    "  plan --spec FILE [--set path=value ...] [--world-size N] [--gpu-memory 24GiB]\n"
    "       [--model-config config.json] [--json]\n"
    "                             the memory per process the run will need, and whether it fits\n"
    "  launch --nproc-per-node N [--nnodes M --node-rank R --master-addr A --master-port P]\n"
    "         -- COMMAND [ARGS]   N ranks of COMMAND with torchrun's variables (a distributed run)\n"
    "  report RUN_DIR             RUN_DIR/report.html: plots, samples, data summary, spec\n"
    "  eval --model PATH [--data FILE...] [--task NAME|FILE ...] [--adapter DIR] [--metrics ...]\n"
    "                             loss, perplexity, generation metrics (ROUGE, BLEU, chrF) and\n"
    "                             multiple-choice accuracy (lm-evaluation-harness's way)\n"
    "  make-task NAME --output FILE [--docs 200] [--choices 4] [--seed 0]\n"
    "                             a built-in multiple-choice task (debian-packages, iso-countries)\n"
    "                             as a task file\n"
    "  spec --print-defaults | --check FILE [--set path=value ...]\n"
    "                             the run spec: every field with its default, or validation\n"
    "  make-default-dataset --output FILE [--status /var/lib/dpkg/status]\n"
    "                             the default instruction data: one Dolly record per installed\n"
    "                             Debian package\n"
    "  make-default-dataset --vlm --output DIR [--images 400] [--seed 0]\n"
    "                             the default image-caption data: generated pictures of coloured\n"
    "                             shapes in Flickr8K's layout\n"
    "  make-vlm --text PATH --output DIR [...]\n"
    "                             a Gemma 3 image+text folder: a real text model and a new small\n"
    "                             SigLIP tower (to fine-tune on images on a CPU)\n"
    "\n"
    "run `llmtrain <command> --help` for the options of one command\n";

}  // namespace

namespace llmtrain::cli {
int Fail(const std::string& command, const std::string& message, int code) {
  std::fprintf(stderr, "llmtrain %s: %s\n", command.c_str(), message.c_str());
  return code;
}
}  // namespace llmtrain::cli

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  const std::vector<std::string> args(argv + 2, argv + argc);
  if (command == "inspect") return llmtrain::cli::RunInspect(args);
  if (command == "convert") return llmtrain::cli::RunConvert(args);
  if (command == "forward") return llmtrain::cli::RunForward(args);
  if (command == "generate") return llmtrain::cli::RunGenerate(args);
  if (command == "tokenize") return llmtrain::cli::RunTokenize(args);
  if (command == "data-check") return llmtrain::cli::RunDataCheck(args);
  if (command == "quantize") return llmtrain::cli::RunQuantize(args);
  if (command == "merge") return llmtrain::cli::RunMerge(args);
  if (command == "export") return llmtrain::cli::RunExport(args);
  if (command == "serve") return llmtrain::cli::RunServe(args);
  if (command == "plan") return llmtrain::cli::RunPlan(args);
  if (command == "spec") return llmtrain::cli::RunSpecCommand(args);
  if (command == "train") return llmtrain::cli::RunTrain(args);
  if (command == "sweep") return llmtrain::cli::RunSweep(args);
  if (command == "report") return llmtrain::cli::RunReport(args);
  if (command == "eval") return llmtrain::cli::RunEval(args);
  if (command == "make-task") return llmtrain::cli::RunMakeTask(args);
  if (command == "launch") return llmtrain::cli::RunLaunch(args);
  if (command == "make-default-dataset") return llmtrain::cli::RunMakeDefaultDataset(args);
  if (command == "preprocess-images") return llmtrain::cli::RunPreprocessImages(args);
  if (command == "make-vlm") return llmtrain::cli::RunMakeVlm(args);
  std::fprintf(stderr, "llmtrain: unknown command \"%s\"\n\n%s", command.c_str(), kUsage);
  return 2;
}
