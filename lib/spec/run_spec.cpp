// Run specs (spec/run_spec.h): parsing, overrides, defaults and validation.
#include "llmtrain/spec/run_spec.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/reflection.h>
#include <google/protobuf/text_format.h>
#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <cmath>
#include <regex>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "llmtrain/core/atomic_file.h"
#include "llmtrain/data/dataset.h"
#include "llmtrain/io/gguf.h"
#include "llmtrain/io/hf_config.h"
#include "llmtrain/lora/adapter_config.h"
#include "llmtrain/model/family.h"
#include "spec/run_spec_proto_text.h"  // kRunSpecProto: the .proto's text, for the commented defaults

namespace llmtrain::spec {
namespace {

namespace pb = google::protobuf;

// Text-proto parse errors with line and column.
class Collector : public pb::io::ErrorCollector {
 public:
  void AddError(int line, pb::io::ColumnNumber column, const std::string& message) override {
    if (first.empty()) first = absl::StrCat("line ", line + 1, ", column ", column + 1, ": ", message);
  }
  std::string first;
};

// The defaults: every scalar of every section set.
RunSpec Defaults() {
  RunSpec d;
  ModelSpec* m = d.mutable_model();
  m->set_path("");
  m->set_family("");
  m->set_dtype("f32");
  m->set_load_in_4bit(true);
  m->set_quant_type("nf4");
  m->set_quant_blocksize(64);
  m->set_double_quant(true);
  m->set_tokenizer("");
  LoraSpec* l = d.mutable_lora();
  l->set_r(8);
  l->set_alpha(16);
  l->set_dropout(0.05);
  l->set_target_regex("");
  l->set_use_rslora(false);
  l->set_use_dora(false);
  l->set_dtype("f32");
  l->set_init("default");
  DataSpec* a = d.mutable_data();
  a->set_format("auto");
  a->set_template_("model");
  a->set_max_length(512);
  a->set_truncation("right");
  a->set_packing(false);
  a->set_mask_prompt(true);
  a->set_max_bad_fraction(0.01);
  a->set_seed(0);
  TrainingSpec* t = d.mutable_training();
  t->set_epochs(1.0);
  t->set_max_steps(0);
  t->set_micro_batch_size(4);
  t->set_gradient_accumulation_steps(1);
  t->set_learning_rate(2e-4);
  t->set_lr_scheduler("linear");
  t->set_warmup_steps(0);
  t->set_warmup_ratio(0.0);
  t->set_weight_decay(0.0);
  t->set_adam_beta1(0.9);
  t->set_adam_beta2(0.999);
  t->set_adam_epsilon(1e-8);
  t->set_max_grad_norm(1.0);
  t->set_activation_checkpointing(false);
  t->set_seed(42);
  t->set_max_nonfinite_steps(10);
  t->set_log_every_steps(10);
  t->set_autocast("");
  EvalSpec* e = d.mutable_eval();
  e->set_every_steps(0);
  e->set_max_batches(0);
  e->set_max_new_tokens(32);
  e->set_temperature(0.0);
  CheckpointSpec* c = d.mutable_checkpoint();
  c->set_every_steps(0);
  c->set_keep_last(2);
  d.mutable_output()->set_dir("");
  DistributedSpec* s = d.mutable_distributed();
  s->set_engine("single");
  s->set_world_size(1);
  s->set_cpu_offload(false);
  return d;
}

// Copies each scalar that `to` lacks from `from`, recursively.
void FillFrom(const pb::Message& from, pb::Message* to) {
  const pb::Descriptor* desc = from.GetDescriptor();
  const pb::Reflection* rf = from.GetReflection();
  const pb::Reflection* rt = to->GetReflection();
  for (int i = 0; i < desc->field_count(); ++i) {
    const pb::FieldDescriptor* f = desc->field(i);
    if (f->is_repeated()) continue;
    if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      FillFrom(rf->GetMessage(from, f), rt->MutableMessage(to, f));
      continue;
    }
    if (!rt->HasField(*to, f) && rf->HasField(from, f)) {
      switch (f->cpp_type()) {
        case pb::FieldDescriptor::CPPTYPE_STRING: rt->SetString(to, f, rf->GetString(from, f)); break;
        case pb::FieldDescriptor::CPPTYPE_INT64: rt->SetInt64(to, f, rf->GetInt64(from, f)); break;
        case pb::FieldDescriptor::CPPTYPE_UINT64: rt->SetUInt64(to, f, rf->GetUInt64(from, f)); break;
        case pb::FieldDescriptor::CPPTYPE_DOUBLE: rt->SetDouble(to, f, rf->GetDouble(from, f)); break;
        case pb::FieldDescriptor::CPPTYPE_BOOL: rt->SetBool(to, f, rf->GetBool(from, f)); break;
        default: break;
      }
    }
  }
}

// Parses `text` into field `f` of `msg` (singular) or appends it (repeated).
absl::Status SetScalar(pb::Message* msg, const pb::FieldDescriptor* f, const std::string& text,
                       const std::string& path) {
  const pb::Reflection* r = msg->GetReflection();
  const bool rep = f->is_repeated();
  const auto bad = [&](const char* what) {
    return absl::InvalidArgumentError(absl::StrCat("--set ", path, ": \"", text, "\" is not ", what));
  };
  switch (f->cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_STRING:
      rep ? r->AddString(msg, f, text) : r->SetString(msg, f, text);
      return absl::OkStatus();
    case pb::FieldDescriptor::CPPTYPE_INT64: {
      int64_t v;
      if (!absl::SimpleAtoi(text, &v)) return bad("an integer");
      rep ? r->AddInt64(msg, f, v) : r->SetInt64(msg, f, v);
      return absl::OkStatus();
    }
    case pb::FieldDescriptor::CPPTYPE_UINT64: {
      uint64_t v;
      if (!absl::SimpleAtoi(text, &v)) return bad("a non-negative integer");
      rep ? r->AddUInt64(msg, f, v) : r->SetUInt64(msg, f, v);
      return absl::OkStatus();
    }
    case pb::FieldDescriptor::CPPTYPE_DOUBLE: {
      double v;
      if (!absl::SimpleAtod(text, &v)) return bad("a number");
      rep ? r->AddDouble(msg, f, v) : r->SetDouble(msg, f, v);
      return absl::OkStatus();
    }
    case pb::FieldDescriptor::CPPTYPE_BOOL: {
      bool v;
      if (!absl::SimpleAtob(text, &v)) return bad("true or false");
      rep ? r->AddBool(msg, f, v) : r->SetBool(msg, f, v);
      return absl::OkStatus();
    }
    default:
      return absl::InvalidArgumentError(absl::StrCat("--set ", path, ": not a scalar field"));
  }
}

bool OneOf(const std::string& v, std::initializer_list<const char*> allowed) {
  return std::any_of(allowed.begin(), allowed.end(), [&](const char* a) { return v == a; });
}

std::string Quoted(std::initializer_list<const char*> allowed) {
  std::vector<std::string> q;
  for (const char* a : allowed) q.push_back(absl::StrCat("\"", a, "\""));
  return absl::StrJoin(q, ", ");
}

bool ValidRegex(const std::string& pattern) {
  // std::regex compiles and matches recursively: a bound keeps hostile patterns off the stack.
  if (pattern.size() > 256) return false;
  try {
    std::regex compiled(pattern, std::regex::ECMAScript);
    return true;
  } catch (const std::regex_error&) {
    return false;
  }
}

}  // namespace

absl::StatusOr<RunSpec> ParseRunSpec(absl::string_view where, absl::string_view text_view) {
  RunSpec spec;
  const std::string text(text_view);
  if (absl::StartsWith(absl::StripLeadingAsciiWhitespace(text), "{")) {
    pb::util::JsonParseOptions options;
    options.ignore_unknown_fields = false;
    const auto status = pb::util::JsonStringToMessage(text, &spec, options);
    if (!status.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", std::string(status.message())));
    }
    return spec;
  }
  pb::TextFormat::Parser parser;
  Collector collector;
  parser.RecordErrorsTo(&collector);
  if (!parser.ParseFromString(text, &spec)) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", collector.first.empty() ? "not a valid spec" : collector.first));
  }
  return spec;
}

absl::Status ApplyOverride(RunSpec* spec, absl::string_view assignment) {
  const size_t eq = assignment.find('=');
  if (eq == absl::string_view::npos || eq == 0) {
    return absl::InvalidArgumentError(absl::StrCat("--set ", assignment, ": expected path.to.field=value"));
  }
  const std::string path(assignment.substr(0, eq));
  const std::string value(assignment.substr(eq + 1));
  const std::vector<std::string> parts = absl::StrSplit(path, '.');
  pb::Message* msg = spec;
  for (size_t i = 0; i < parts.size(); ++i) {
    const pb::FieldDescriptor* f = msg->GetDescriptor()->FindFieldByName(parts[i]);
    if (f == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("--set ", path, ": \"", parts[i], "\" is not a field of ",
                                                     msg->GetDescriptor()->name()));
    }
    const bool last = i + 1 == parts.size();
    if (f->is_map()) {
      // lora.rank_pattern.KEY=value: the rest of the path is the key.
      if (last) return absl::InvalidArgumentError(absl::StrCat("--set ", path, ": give a key, as ", path, ".KEY=value"));
      const std::string key = absl::StrJoin(std::vector<std::string>(parts.begin() + i + 1, parts.end()), ".");
      pb::Message* entry = msg->GetReflection()->AddMessage(msg, f);
      const pb::FieldDescriptor* k = entry->GetDescriptor()->FindFieldByName("key");
      const pb::FieldDescriptor* v = entry->GetDescriptor()->FindFieldByName("value");
      entry->GetReflection()->SetString(entry, k, key);
      return SetScalar(entry, v, value, path);
    }
    if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      if (last) return absl::InvalidArgumentError(absl::StrCat("--set ", path, ": is a section; set one of its fields"));
      msg = msg->GetReflection()->MutableMessage(msg, f);
      continue;
    }
    if (!last) return absl::InvalidArgumentError(absl::StrCat("--set ", path, ": \"", parts[i], "\" has no fields"));
    if (f->is_repeated()) {
      msg->GetReflection()->ClearField(msg, f);
      if (value.empty()) return absl::OkStatus();
      for (absl::string_view item : absl::StrSplit(value, ',')) {
        if (absl::Status s = SetScalar(msg, f, std::string(absl::StripAsciiWhitespace(item)), path); !s.ok()) return s;
      }
      return absl::OkStatus();
    }
    return SetScalar(msg, f, value, path);
  }
  return absl::OkStatus();
}

void FillDefaults(RunSpec* spec) {
  FillFrom(Defaults(), spec);
  if (spec->lora().target_modules().empty() && spec->lora().target_regex().empty()) {
    spec->mutable_lora()->add_target_modules("all-linear");
  }
  if (spec->output().report_to().empty()) {
    spec->mutable_output()->add_report_to("jsonl");
    spec->mutable_output()->add_report_to("tensorboard");
  }
}

absl::StatusOr<RunSpec> LoadRunSpec(absl::string_view path, const std::vector<std::string>& overrides) {
  auto text = ReadFileToString(path);
  if (!text.ok()) return text.status();
  auto spec = ParseRunSpec(path, *text);
  if (!spec.ok()) return spec.status();
  for (const std::string& o : overrides) {
    if (absl::Status s = ApplyOverride(&*spec, o); !s.ok()) return s;
  }
  FillDefaults(&*spec);
  return spec;
}

std::vector<SpecError> FindSpecErrors(const RunSpec& s) {
  std::vector<SpecError> errors;
  const auto err = [&](std::string field, std::string message) { errors.push_back({std::move(field), std::move(message)}); };
  const auto positive = [&](const std::string& field, double v) {
    if (!(v > 0)) err(field, absl::StrCat("must be > 0, got ", v));
  };
  const auto non_negative = [&](const std::string& field, double v) {
    if (!(v >= 0)) err(field, absl::StrCat("must be ≥ 0, got ", v));
  };
  const auto in_unit = [&](const std::string& field, double v, bool closed) {
    if (!(v >= 0 && (closed ? v <= 1 : v < 1))) err(field, absl::StrCat("must be in [0, 1", closed ? "]" : ")", ", got ", v));
  };
  const auto choice = [&](const std::string& field, const std::string& v, std::initializer_list<const char*> allowed) {
    if (!OneOf(v, allowed)) err(field, absl::StrCat("\"", v, "\" is not one of ", Quoted(allowed)));
  };
  const auto file = [&](const std::string& field, const std::string& path) {
    if (!IsRegularFile(path)) err(field, absl::StrCat(path, ": no such file"));
  };

  // model
  const ModelSpec& m = s.model();
  std::optional<io::HfConfig> config;
  if (m.path().empty()) {
    err("model.path", "is required (a model folder or a .gguf file)");
  } else if (absl::EndsWith(m.path(), ".gguf")) {
    if (!IsRegularFile(m.path())) {
      err("model.path", absl::StrCat(m.path(), ": no such file"));
    } else if (auto gguf = io::GgufFile::Open(m.path()); !gguf.ok()) {
      err("model.path", std::string(gguf.status().message()));
    } else if (auto c = io::HfConfigFromGguf(**gguf); !c.ok()) {
      err("model.path", std::string(c.status().message()));
    } else {
      config = *c;
    }
  } else if (!IsDirectory(m.path())) {
    err("model.path", absl::StrCat(m.path(), ": no such folder or .gguf file"));
  } else if (auto c = io::LoadHfConfig(m.path() + "/config.json"); !c.ok()) {
    err("model.path", std::string(c.status().message()));
  } else {
    config = *c;
  }
  if (config && !m.family().empty() && m.family() != config->text.model_type) {
    err("model.family", absl::StrCat("\"", m.family(), "\" but the model is ", config->text.model_type));
  }
  choice("model.dtype", m.dtype(), {"f32", "bf16"});
  choice("model.quant_type", m.quant_type(), {"nf4", "fp4"});
  if (!OneOf(absl::StrCat(m.quant_blocksize()), {"32", "64", "128", "256", "512", "1024", "2048", "4096"})) {
    err("model.quant_blocksize", absl::StrCat(m.quant_blocksize(), " is not one of 32, 64, 128, 256, 512, 1024, 2048, 4096"));
  }
  if (!m.tokenizer().empty() && !IsRegularFile(m.tokenizer()) && !IsDirectory(m.tokenizer())) {
    err("model.tokenizer", absl::StrCat(m.tokenizer(), ": no such file or folder"));
  }

  // lora
  const LoraSpec& l = s.lora();
  if (l.r() <= 0 || l.r() > 65536) err("lora.r", absl::StrCat("must be in [1, 65536], got ", l.r()));
  positive("lora.alpha", l.alpha());
  in_unit("lora.dropout", l.dropout(), false);
  choice("lora.dtype", l.dtype(), {"f32", "bf16"});
  choice("lora.init", l.init(), {"default", "gaussian"});
  if (!l.target_regex().empty() && !ValidRegex(l.target_regex())) {
    err("lora.target_regex", absl::StrCat("\"", l.target_regex(), "\" is not a valid regular expression"));
  }
  if (!l.target_regex().empty() && !l.target_modules().empty() &&
      !(l.target_modules_size() == 1 && l.target_modules(0) == "all-linear")) {
    err("lora.target_regex", "give target_modules or target_regex, not both");
  }
  for (const auto& [pattern, r] : l.rank_pattern()) {
    if (!ValidRegex(pattern)) err("lora.rank_pattern", absl::StrCat("\"", pattern, "\" is not a valid regular expression"));
    if (r <= 0) err(absl::StrCat("lora.rank_pattern[\"", pattern, "\"]"), absl::StrCat("must be > 0, got ", r));
  }
  for (const auto& [pattern, a] : l.alpha_pattern()) {
    if (!ValidRegex(pattern)) err("lora.alpha_pattern", absl::StrCat("\"", pattern, "\" is not a valid regular expression"));
    if (!(a > 0)) err(absl::StrCat("lora.alpha_pattern[\"", pattern, "\"]"), absl::StrCat("must be > 0, got ", a));
  }
  if (config) {
    auto family = model::BuildFamilySpec(config->text);
    if (family.ok()) {
      const std::vector<std::string> names = model::ProjectionNames(*family, config->text.num_hidden_layers);
      lora::LoraConfig lc;
      lc.target_modules.assign(l.target_modules().begin(), l.target_modules().end());
      if (!l.target_regex().empty()) {
        lc.target_regex = l.target_regex();
        lc.target_modules.clear();
      }
      lc.layers_to_transform.assign(l.layers_to_transform().begin(), l.layers_to_transform().end());
      lc.modules_to_save.assign(l.modules_to_save().begin(), l.modules_to_save().end());
      bool any = false;
      if (lc.target_regex.has_value() ? ValidRegex(*lc.target_regex) : true) {
        for (const std::string& name : names) any = any || lora::IsLoraTarget(lc, name);
      }
      if (!any) {
        err(l.target_regex().empty() ? "lora.target_modules" : "lora.target_regex",
            absl::StrCat("matches none of the model's ", names.size(), " projections (",
                         names.empty() ? "" : names.front(), ", …)"));
      }
      for (int64_t layer : l.layers_to_transform()) {
        if (layer < 0 || layer >= config->text.num_hidden_layers) {
          err("lora.layers_to_transform", absl::StrCat("layer ", layer, " is outside the model's ",
                                                       config->text.num_hidden_layers, " layers"));
        }
      }
    }
  }

  // data
  const DataSpec& d = s.data();
  if (d.train_files().empty()) err("data.train_files", "is required (at least one file)");
  for (int i = 0; i < d.train_files_size(); ++i) file(absl::StrCat("data.train_files[", i, "]"), d.train_files(i));
  for (int i = 0; i < d.eval_files_size(); ++i) file(absl::StrCat("data.eval_files[", i, "]"), d.eval_files(i));
  if (!data::ParseFormat(d.format()).ok()) {
    err("data.format", absl::StrCat("\"", d.format(), "\" is not one of \"auto\", \"dolly\", \"alpaca\", \"messages\", "
                                    "\"sharegpt\", \"text\", \"captions\""));
  }
  choice("data.template", d.template_(), {"model", "none"});
  choice("data.truncation", d.truncation(), {"right", "drop"});
  if (d.max_length() <= 1) {
    err("data.max_length", absl::StrCat("must be ≥ 2, got ", d.max_length()));
  } else if (config && config->text.max_position_embeddings > 0 && d.max_length() > config->text.max_position_embeddings) {
    err("data.max_length", absl::StrCat(d.max_length(), " is over the model's context of ",
                                        config->text.max_position_embeddings, " tokens"));
  }
  in_unit("data.max_bad_fraction", d.max_bad_fraction(), true);

  // training
  const TrainingSpec& t = s.training();
  if (t.max_steps() < 0) err("training.max_steps", absl::StrCat("must be ≥ 0, got ", t.max_steps()));
  if (t.max_steps() == 0) positive("training.epochs", t.epochs());
  if (t.micro_batch_size() <= 0) err("training.micro_batch_size", absl::StrCat("must be ≥ 1, got ", t.micro_batch_size()));
  if (t.gradient_accumulation_steps() <= 0) {
    err("training.gradient_accumulation_steps", absl::StrCat("must be ≥ 1, got ", t.gradient_accumulation_steps()));
  }
  positive("training.learning_rate", t.learning_rate());
  choice("training.lr_scheduler", t.lr_scheduler(), {"linear", "cosine", "constant"});
  choice("training.autocast", t.autocast(), {"", "bf16"});
  if (!t.autocast().empty() && m.dtype() != "f32") {
    err("training.autocast", absl::StrCat("needs model.dtype \"f32\" (the model is \"", m.dtype(), "\" already)"));
  }
  if (t.warmup_steps() < 0) err("training.warmup_steps", absl::StrCat("must be ≥ 0, got ", t.warmup_steps()));
  in_unit("training.warmup_ratio", t.warmup_ratio(), false);
  non_negative("training.weight_decay", t.weight_decay());
  in_unit("training.adam_beta1", t.adam_beta1(), false);
  in_unit("training.adam_beta2", t.adam_beta2(), false);
  positive("training.adam_epsilon", t.adam_epsilon());
  non_negative("training.max_grad_norm", t.max_grad_norm());
  if (t.max_nonfinite_steps() <= 0) err("training.max_nonfinite_steps", absl::StrCat("must be ≥ 1, got ", t.max_nonfinite_steps()));
  if (t.log_every_steps() <= 0) err("training.log_every_steps", absl::StrCat("must be ≥ 1, got ", t.log_every_steps()));

  // eval, checkpoint, output, distributed
  const EvalSpec& e = s.eval();
  if (e.every_steps() < 0) err("eval.every_steps", absl::StrCat("must be ≥ 0, got ", e.every_steps()));
  if (e.max_batches() < 0) err("eval.max_batches", absl::StrCat("must be ≥ 0, got ", e.max_batches()));
  if (e.max_new_tokens() < 0) err("eval.max_new_tokens", absl::StrCat("must be ≥ 0, got ", e.max_new_tokens()));
  non_negative("eval.temperature", e.temperature());
  if (s.checkpoint().every_steps() < 0) {
    err("checkpoint.every_steps", absl::StrCat("must be ≥ 0, got ", s.checkpoint().every_steps()));
  }
  if (s.checkpoint().keep_last() < 1) err("checkpoint.keep_last", absl::StrCat("must be ≥ 1, got ", s.checkpoint().keep_last()));
  if (s.output().dir().empty()) err("output.dir", "is required (the run folder)");
  for (int i = 0; i < s.output().report_to_size(); ++i) {
    choice(absl::StrCat("output.report_to[", i, "]"), s.output().report_to(i), {"jsonl", "tensorboard"});
  }
  choice("distributed.engine", s.distributed().engine(), {"single"});
  if (s.distributed().world_size() != 1) {
    err("distributed.world_size", absl::StrCat("must be 1 for the single-process engine, got ", s.distributed().world_size()));
  }
  return errors;
}

absl::Status ValidateRunSpec(const RunSpec& spec) {
  const std::vector<SpecError> errors = FindSpecErrors(spec);
  if (errors.empty()) return absl::OkStatus();
  std::string text = absl::StrCat("the run spec has ", errors.size(), errors.size() == 1 ? " error" : " errors", ":");
  for (const SpecError& e : errors) absl::StrAppend(&text, "\n  ", e.field, ": ", e.message);
  return absl::InvalidArgumentError(text);
}

std::string SpecToText(const RunSpec& spec) {
  std::string out;
  pb::TextFormat::PrintToString(spec, &out);
  return out;
}

std::string DefaultSpecText() {
  // Walk the .proto text: a message's comment lines, then its fields; each field printed with its
  // comment and its default value from Defaults().
  RunSpec defaults = Defaults();
  FillDefaults(&defaults);
  std::map<std::string, const pb::Message*> sections;
  const pb::Reflection* r = defaults.GetReflection();
  for (int i = 0; i < defaults.GetDescriptor()->field_count(); ++i) {
    const pb::FieldDescriptor* f = defaults.GetDescriptor()->field(i);
    sections[f->message_type()->name()] = &r->GetMessage(defaults, f);
  }
  std::string out = "# llmtrain run spec: every field with its default (text proto).\n";
  std::vector<std::string> comments;
  const pb::Message* current = nullptr;
  std::map<std::string, std::string> section_names;  // message type → field name in RunSpec
  for (int i = 0; i < defaults.GetDescriptor()->field_count(); ++i) {
    const pb::FieldDescriptor* f = defaults.GetDescriptor()->field(i);
    section_names[f->message_type()->name()] = f->name();
  }
  for (absl::string_view raw : absl::StrSplit(kRunSpecProto, '\n')) {
    const absl::string_view line = absl::StripAsciiWhitespace(raw);
    if (absl::StartsWith(line, "//")) {
      comments.emplace_back(absl::StripAsciiWhitespace(line.substr(2)));
      continue;
    }
    if (absl::StartsWith(line, "message ")) {
      const std::string name(absl::StripSuffix(absl::StripAsciiWhitespace(line.substr(8)), "{"));
      const std::string type(absl::StripAsciiWhitespace(name));
      current = sections.count(type) ? sections[type] : nullptr;
      if (current != nullptr) {
        absl::StrAppend(&out, "\n");
        for (const std::string& c : comments) absl::StrAppend(&out, "# ", c, "\n");
        absl::StrAppend(&out, section_names[type], " {\n");
      }
      comments.clear();
      continue;
    }
    if (line == "}") {
      if (current != nullptr) absl::StrAppend(&out, "}\n");
      current = nullptr;
      comments.clear();
      continue;
    }
    if (current == nullptr || line.empty() || !absl::StrContains(line, "=")) {
      comments.clear();
      continue;
    }
    // "optional int64 r = 1;" / "repeated string x = 4;" / "map<string, int64> p = 9;"
    std::vector<std::string> words = absl::StrSplit(std::string(line.substr(0, line.find('='))), ' ', absl::SkipEmpty());
    const std::string field = words.empty() ? "" : words.back();
    const pb::FieldDescriptor* f = current->GetDescriptor()->FindFieldByName(field);
    if (f == nullptr) {
      comments.clear();
      continue;
    }
    for (const std::string& c : comments) absl::StrAppend(&out, "  # ", c, "\n");
    comments.clear();
    std::string value;
    pb::TextFormat::Printer printer;
    printer.SetSingleLineMode(true);
    const pb::Reflection* fr = current->GetReflection();
    if (f->is_repeated()) {
      const int n = fr->FieldSize(*current, f);
      if (n == 0) {
        absl::StrAppend(&out, "  # ", field, ": (none)\n");
        continue;
      }
      for (int k = 0; k < n; ++k) {
        printer.PrintFieldValueToString(*current, f, k, &value);
        absl::StrAppend(&out, "  ", field, ": ", value, "\n");
      }
      continue;
    }
    printer.PrintFieldValueToString(*current, f, -1, &value);
    absl::StrAppend(&out, "  ", field, ": ", value, "\n");
  }
  return out;
}

}  // namespace llmtrain::spec
