// The whole public API of llmtrain in one include, for users who prefer that to the narrow
// per-component headers (which build faster).
#pragma once

#include "llmtrain/core/atomic_file.h"
#include "llmtrain/core/dtype.h"
#include "llmtrain/core/progress.h"
#include "llmtrain/core/status.h"
#include "llmtrain/core/threads.h"
#include "llmtrain/io/gguf.h"
#include "llmtrain/io/hf_config.h"
#include "llmtrain/io/mapped_file.h"
#include "llmtrain/io/safetensors.h"
#include "llmtrain/io/tensors.h"
#include "llmtrain/kernels/cross_entropy.h"
#include "llmtrain/model/decoder.h"
#include "llmtrain/model/family.h"
#include "llmtrain/model/generate.h"
#include "llmtrain/tokenizer/chat_template.h"
#include "llmtrain/tokenizer/tokenizer.h"
#include "llmtrain/data/builtin.h"
#include "llmtrain/data/collator.h"
#include "llmtrain/data/dataset.h"
