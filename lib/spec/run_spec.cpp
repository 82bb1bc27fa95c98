// Run specs (spec/run_spec.h): parsing, overrides, defaults and validation.
#include "llmtrain/spec/run_spec.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/reflection.h>
#include <google/protobuf/text_format.h>
#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <cmath>
#include <cctype>
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
#include "llmtrain/eval/tasks.h"
#include "llmtrain/io/gguf.h"
#include "llmtrain/io/hf_config.h"
#include "llmtrain/lora/adapter_config.h"
#include "llmtrain/spec/memory_plan.h"
#include "llmtrain/model/family.h"
#include "llmtrain/core/status.h"
#include "spec/text_proto_errors.h"
#include "nlohmann/json.hpp"
#include "spec/run_spec_proto_text.h"  // kRunSpecProto: the .proto's text, for the commented defaults

namespace llmtrain::spec {
namespace {

namespace pb = google::protobuf;

using Collector = detail::TextProtoErrors;

// The defaults: every scalar of every section set.
RunSpec Defaults() {
  RunSpec d;
  ModelSpec* m = d.mutable_model();
  m->set_path("");
  m->set_family("");
  m->set_dtype(ModelSpec::f32);
  m->set_load_in_4bit(true);
  m->set_quant_type(ModelSpec::nf4);
  m->set_quant_blocksize(64);
  m->set_double_quant(true);
  m->set_tokenizer("");
  m->set_device("cpu");
  LoraSpec* l = d.mutable_lora();
  l->set_r(8);
  l->set_alpha(16);
  l->set_dropout(0.05);
  l->set_target_regex("");
  l->set_use_rslora(false);
  l->set_use_dora(false);
  l->set_dtype(LoraSpec::f32);
  l->set_init(LoraSpec::default_);
  DataSpec* a = d.mutable_data();
  a->set_format(DataSpec::auto_);
  a->set_template_(DataSpec::model);
  a->set_max_length(512);
  a->set_truncation(DataSpec::right);
  a->set_packing(false);
  a->set_mask_prompt(true);
  a->set_max_bad_fraction(0.01);
  a->set_seed(0);
  a->set_image_dir("");
  a->set_image_list("");
  a->set_image_labels(DataSpec::assistant);
  a->set_eval_image_list("");
  TrainingSpec* t = d.mutable_training();
  t->set_epochs(1.0);
  t->set_max_steps(0);
  t->set_micro_batch_size(4);
  t->set_gradient_accumulation_steps(1);
  t->set_learning_rate(2e-4);
  t->set_lr_scheduler(TrainingSpec::linear);
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
  t->set_autocast(TrainingSpec::off);
  EvalSpec* e = d.mutable_eval();
  e->set_every_steps(0);
  e->set_max_batches(0);
  e->set_max_new_tokens(32);
  e->set_temperature(0.0);
  e->set_sample_image_prompt(data::kCaptionPrompt);
  e->set_max_generation_records(32);
  e->set_task_docs(100);
  CheckpointSpec* c = d.mutable_checkpoint();
  c->set_every_steps(0);
  c->set_keep_last(2);
  d.mutable_output()->set_dir("");
  DistributedSpec* s = d.mutable_distributed();
  s->set_engine(DistributedSpec::single);
  s->set_world_size(0);
  s->set_cpu_offload(false);
  s->set_timeout_s(1800.0);
  s->set_init_method("env://");
  s->set_memory_limit("auto");
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
        case pb::FieldDescriptor::CPPTYPE_ENUM: rt->SetEnumValue(to, f, rf->GetEnumValue(from, f)); break;
        default: break;
      }
    }
  }
}

// The value of `type` called `name`: its name as written in the .proto; "" is accepted for a
// value named "off" (what an empty string meant before the field was an enum).
const pb::EnumValueDescriptor* FindEnumValue(const pb::EnumDescriptor* type, absl::string_view name) {
  if (name.empty()) return type->FindValueByName("off");
  return type->FindValueByName(std::string(name));
}

// "f32", "bf16": the names of an enum's values, for messages.
std::string EnumNames(const pb::EnumDescriptor* type) {
  std::vector<std::string> names;
  for (int i = 0; i < type->value_count(); ++i) names.push_back(absl::StrCat("\"", type->value(i)->name(), "\""));
  return absl::StrJoin(names, ", ");
}

}  // namespace

namespace detail {

absl::StatusOr<std::string> NormalizeEnumsInText(absl::string_view where, const pb::Descriptor* root,
                                                 absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  std::vector<const pb::Descriptor*> types = {root};
  std::vector<std::string> path;
  std::string last_identifier;
  const pb::FieldDescriptor* value_field = nullptr;  // the enum field whose value comes next
  bool in_list = false;
  int line = 1;
  const auto field_path = [&](const pb::FieldDescriptor* f) {
    return absl::StrCat(absl::StrJoin(path, "."), path.empty() ? "" : ".", f->name());
  };
  const auto check = [&](absl::string_view name) -> absl::StatusOr<std::string> {
    const pb::EnumValueDescriptor* v = FindEnumValue(value_field->enum_type(), name);
    if (v == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": line ", line, ": ", field_path(value_field), ": \"",
                                                     name, "\" is not one of ", EnumNames(value_field->enum_type())));
    }
    return v->name();
  };
  size_t i = 0;
  while (i < text.size()) {
    const char c = text[i];
    if (c == '\n') ++line;
    if (c == '#') {  // a comment, to the end of the line
      const size_t end = std::min(text.find('\n', i), text.size());
      absl::StrAppend(&out, text.substr(i, end - i));
      i = end;
      continue;
    }
    if (c == '"' || c == '\'') {
      size_t end = i + 1;
      while (end < text.size() && text[end] != c && text[end] != '\n') end += text[end] == '\\' ? 2 : 1;
      end = std::min(end + 1, text.size());
      if (value_field != nullptr) {
        const absl::string_view inner = text.substr(i + 1, end - i - 2);
        LLMTRAIN_ASSIGN_OR_RETURN(std::string name, check(inner));
        absl::StrAppend(&out, name);
        if (!in_list) value_field = nullptr;
      } else {
        absl::StrAppend(&out, text.substr(i, end - i));
      }
      i = end;
      continue;
    }
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t end = i;
      while (end < text.size() && (std::isalnum(static_cast<unsigned char>(text[end])) || text[end] == '_')) ++end;
      const absl::string_view word = text.substr(i, end - i);
      if (value_field != nullptr) {
        LLMTRAIN_ASSIGN_OR_RETURN(std::string name, check(word));
        absl::StrAppend(&out, name);
        if (!in_list) value_field = nullptr;
      } else {
        absl::StrAppend(&out, word);
        last_identifier = std::string(word);
      }
      i = end;
      continue;
    }
    if (c == ':' && !types.empty() && types.back() != nullptr) {
      const pb::FieldDescriptor* f = types.back()->FindFieldByName(last_identifier);
      value_field = f != nullptr && f->cpp_type() == pb::FieldDescriptor::CPPTYPE_ENUM ? f : nullptr;
    } else if (c == '[') {
      in_list = value_field != nullptr;
    } else if (c == ']') {
      in_list = false;
      value_field = nullptr;
    } else if (c == '{' || c == '<') {
      const pb::FieldDescriptor* f =
          types.back() != nullptr ? types.back()->FindFieldByName(last_identifier) : nullptr;
      types.push_back(f != nullptr ? f->message_type() : nullptr);
      path.push_back(last_identifier);
      value_field = nullptr;
    } else if ((c == '}' || c == '>') && types.size() > 1) {
      types.pop_back();
      path.pop_back();
    } else if (!std::isspace(static_cast<unsigned char>(c)) && c != ',' && c != ';') {
      value_field = nullptr;  // a number or another symbol: not an enum value
    }
    out += c;
    ++i;
  }
  return out;
}

}  // namespace detail

namespace {

// The same for JSON specs: enum fields may hold any string, so a bad one is named by its path
// here (the JSON parser's own message lacks it), and "" becomes "off".
absl::Status NormalizeEnumsInJson(absl::string_view where, const pb::Descriptor* type, nlohmann::json* node,
                                  const std::string& path) {
  if (!node->is_object()) return absl::OkStatus();
  for (auto it = node->begin(); it != node->end(); ++it) {
    const pb::FieldDescriptor* f = type->FindFieldByName(it.key());
    if (f == nullptr) f = type->FindFieldByCamelcaseName(it.key());
    if (f == nullptr) continue;  // the JSON parser names unknown fields
    const std::string field = absl::StrCat(path, path.empty() ? "" : ".", f->name());
    if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE && !f->is_map()) {
      LLMTRAIN_RETURN_IF_ERROR(NormalizeEnumsInJson(where, f->message_type(), &it.value(), field));
      continue;
    }
    if (f->cpp_type() != pb::FieldDescriptor::CPPTYPE_ENUM) continue;
    std::vector<nlohmann::json*> values;
    if (it.value().is_array()) {
      for (auto& v : it.value()) values.push_back(&v);
    } else {
      values.push_back(&it.value());
    }
    for (nlohmann::json* v : values) {
      if (!v->is_string()) continue;
      const pb::EnumValueDescriptor* e = FindEnumValue(f->enum_type(), v->get<std::string>());
      if (e == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": ", field, ": \"", v->get<std::string>(),
                                                       "\" is not one of ", EnumNames(f->enum_type())));
      }
      *v = e->name();
    }
  }
  return absl::OkStatus();
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
    case pb::FieldDescriptor::CPPTYPE_ENUM: {
      const pb::EnumValueDescriptor* v = FindEnumValue(f->enum_type(), text);
      if (v == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat("--set ", path, ": \"", text, "\" is not one of ",
                                                       EnumNames(f->enum_type())));
      }
      rep ? r->AddEnumValue(msg, f, v->number()) : r->SetEnumValue(msg, f, v->number());
      return absl::OkStatus();
    }
    default:
      return absl::InvalidArgumentError(absl::StrCat("--set ", path, ": not a scalar field"));
  }
}

bool OneOf(const std::string& v, std::initializer_list<const char*> allowed) {
  return std::any_of(allowed.begin(), allowed.end(), [&](const char* a) { return v == a; });
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
    nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (json.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(where, ": not valid JSON"));
    LLMTRAIN_RETURN_IF_ERROR(NormalizeEnumsInJson(where, RunSpec::descriptor(), &json, ""));
    pb::util::JsonParseOptions options;
    options.ignore_unknown_fields = false;
    const auto status = pb::util::JsonStringToMessage(json.dump(), &spec, options);
    if (!status.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", std::string(status.message())));
    }
    return spec;
  }
  LLMTRAIN_ASSIGN_OR_RETURN(const std::string normalized, detail::NormalizeEnumsInText(where, RunSpec::descriptor(), text));
  pb::TextFormat::Parser parser;
  Collector collector;
  parser.RecordErrorsTo(&collector);
  if (!parser.ParseFromString(normalized, &spec)) {
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
    spec->mutable_output()->add_report_to(OutputSpec::jsonl);
    spec->mutable_output()->add_report_to(OutputSpec::tensorboard);
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
  if (!OneOf(absl::StrCat(m.quant_blocksize()), {"32", "64", "128", "256", "512", "1024", "2048", "4096"})) {
    err("model.quant_blocksize", absl::StrCat(m.quant_blocksize(), " is not one of 32, 64, 128, 256, 512, 1024, 2048, 4096"));
  }
  if (!m.tokenizer().empty() && !IsRegularFile(m.tokenizer()) && !IsDirectory(m.tokenizer())) {
    err("model.tokenizer", absl::StrCat(m.tokenizer(), ": no such file or folder"));
  }

  const bool cuda_device = absl::StartsWith(m.device(), "cuda");
  if (m.device() != "cpu" && m.device() != "cuda" &&
      !(absl::StartsWith(m.device(), "cuda:") && m.device().size() > 5 && m.device().size() <= 7 &&
        std::all_of(m.device().begin() + 5, m.device().end(), [](char c) { return c >= '0' && c <= '9'; }))) {
    err("model.device", absl::StrCat("must be \"cpu\", \"cuda\" or \"cuda:N\" (N < 100), got \"", m.device(), "\""));
  }

  // lora
  const LoraSpec& l = s.lora();
  if (l.r() <= 0 || l.r() > 65536) err("lora.r", absl::StrCat("must be in [1, 65536], got ", l.r()));
  positive("lora.alpha", l.alpha());
  in_unit("lora.dropout", l.dropout(), false);
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
    auto family = model::BuildModelSpec(*config);
    if (family.ok()) {
      std::vector<std::string> names = model::VisionProjectionNames(*config);
      for (std::string& n : model::ProjectionNames(*family, config->text.num_hidden_layers)) names.push_back(std::move(n));
      lora::LoraConfig lc;
      lc.target_modules.assign(l.target_modules().begin(), l.target_modules().end());
      if (!l.target_regex().empty()) {
        lc.target_regex = l.target_regex();
        lc.target_modules.clear();
      }
      lc.layers_to_transform.assign(l.layers_to_transform().begin(), l.layers_to_transform().end());
      lc.modules_to_save.assign(l.modules_to_save().begin(), l.modules_to_save().end());
      bool any = false;
      absl::StatusOr<lora::LoraConfig> resolved = lora::WithDefaultTargets(lc, config->model_type);
      if (!resolved.ok()) {
        err("lora.target_modules", std::string(resolved.status().message()));
      } else if (resolved->target_regex.has_value() ? ValidRegex(*resolved->target_regex) : true) {
        for (const std::string& name : names) any = any || lora::IsLoraTarget(*resolved, name);
      }
      if (resolved.ok() && !any) {
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
  if (d.max_length() <= 1) {
    err("data.max_length", absl::StrCat("must be ≥ 2, got ", d.max_length()));
  } else if (config && config->text.max_position_embeddings > 0 && d.max_length() > config->text.max_position_embeddings) {
    err("data.max_length", absl::StrCat(d.max_length(), " is over the model's context of ",
                                        config->text.max_position_embeddings, " tokens"));
  }
  in_unit("data.max_bad_fraction", d.max_bad_fraction(), true);
  if (!d.image_list().empty()) file("data.image_list", d.image_list());
  if (!d.eval_image_list().empty()) file("data.eval_image_list", d.eval_image_list());
  if (!d.image_dir().empty() && !IsDirectory(d.image_dir())) {
    err("data.image_dir", absl::StrCat("\"", d.image_dir(), "\" is not a folder"));
  }
  if (config && !config->vision.has_value() &&
      (!d.image_dir().empty() || !d.image_list().empty() || !d.eval_image_list().empty())) {
    err(!d.image_dir().empty() ? "data.image_dir" : !d.image_list().empty() ? "data.image_list" : "data.eval_image_list",
        absl::StrCat("the model (", config->model_type, ") has no vision tower"));
  }

  // training
  const TrainingSpec& t = s.training();
  if (t.max_steps() < 0) err("training.max_steps", absl::StrCat("must be ≥ 0, got ", t.max_steps()));
  if (t.max_steps() == 0) positive("training.epochs", t.epochs());
  if (t.micro_batch_size() <= 0) err("training.micro_batch_size", absl::StrCat("must be ≥ 1, got ", t.micro_batch_size()));
  if (t.gradient_accumulation_steps() <= 0) {
    err("training.gradient_accumulation_steps", absl::StrCat("must be ≥ 1, got ", t.gradient_accumulation_steps()));
  }
  positive("training.learning_rate", t.learning_rate());
  if (t.autocast() != TrainingSpec::off && m.dtype() != ModelSpec::f32) {
    err("training.autocast", absl::StrCat("needs model.dtype \"f32\" (the model is \"",
                                          ModelSpec::Dtype_Name(m.dtype()), "\" already)"));
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
  for (int i = 0; i < e.sample_images_size(); ++i) {
    file(absl::StrCat("eval.sample_images[", i, "]"), SampleImagePath(s, i));
  }
  if (e.sample_images_size() > 0) {
    if (config && !config->vision.has_value()) {
      err("eval.sample_images", absl::StrCat("the model (", config->model_type, ") has no vision tower"));
    }
    if (d.template_() != DataSpec::model) err("eval.sample_images", "needs data.template: model (it places the image)");
  }
  non_negative("eval.temperature", e.temperature());
  {
    bool generation = false, choice = false;
    for (int i = 0; i < e.metrics_size(); ++i) {
      const std::string& m = e.metrics(i);
      if (m == "exact_match" || m == "rouge" || m == "bleu" || m == "chrf") {
        generation = true;
      } else if (m == "accuracy" || m == "accuracy_norm") {
        choice = true;
      } else if (m != "loss" && m != "perplexity") {
        err(absl::StrCat("eval.metrics[", i, "]"),
            absl::StrCat("unknown metric \"", m,
                         "\" (loss, perplexity, exact_match, rouge, bleu, chrf, accuracy, accuracy_norm)"));
      }
    }
    if (choice && e.tasks_size() == 0) err("eval.metrics", "accuracy and accuracy_norm need eval.tasks");
    if (!choice && e.tasks_size() > 0) err("eval.tasks", "needs accuracy or accuracy_norm in eval.metrics");
    if (e.metrics_size() > 0 && d.eval_files_size() == 0) {
      err("eval.metrics", "needs eval data (data.eval_files): the metrics are of the evaluations");
    }
    if (generation && d.format() == DataSpec::text) {
      err("eval.metrics", "generation metrics need replies to compare with; data.format text has none");
    }
    if (generation && d.template_() != DataSpec::model) {
      err("eval.metrics", "generation metrics need data.template: model (the prompt is rendered with it)");
    }
    if (e.max_generation_records() < 0) {
      err("eval.max_generation_records", absl::StrCat("must be ≥ 0, got ", e.max_generation_records()));
    }
    if (e.task_docs() < 1) err("eval.task_docs", absl::StrCat("must be ≥ 1, got ", e.task_docs()));
    eval::BuiltinTaskOptions task_options;
    task_options.docs = std::max<int64_t>(1, e.task_docs());
    for (int i = 0; i < e.tasks_size(); ++i) {
      if (auto task = eval::ResolveTask(e.tasks(i), task_options); !task.ok()) {
        err(absl::StrCat("eval.tasks[", i, "]"), std::string(task.status().message()));
      }
    }
  }
  if (s.checkpoint().every_steps() < 0) {
    err("checkpoint.every_steps", absl::StrCat("must be ≥ 0, got ", s.checkpoint().every_steps()));
  }
  if (s.checkpoint().keep_last() < 1) err("checkpoint.keep_last", absl::StrCat("must be ≥ 1, got ", s.checkpoint().keep_last()));
  if (s.output().dir().empty()) err("output.dir", "is required (the run folder)");
  const DistributedSpec& dist = s.distributed();
  if (dist.world_size() < 0) err("distributed.world_size", absl::StrCat("must be ≥ 0, got ", dist.world_size()));
  if (dist.engine() == DistributedSpec::single && dist.world_size() > 1) {
    err("distributed.world_size", absl::StrCat("must be 0 or 1 for the single-process engine, got ", dist.world_size(),
                                               " (engine ddp trains on several)"));
  }
  if (cuda_device && dist.engine() != DistributedSpec::single && m.device() != "cuda") {
    err("model.device", absl::StrCat("\"", m.device(), "\" with distributed.engine ",
                                     DistributedSpec::Engine_Name(dist.engine()),
                                     ": use \"cuda\"; each process takes cuda:LOCAL_RANK"));
  }
  if (dist.memory_limit() != "auto" && dist.memory_limit() != "off") {
    if (auto limit = ParseByteSize(dist.memory_limit()); !limit.ok()) {
      err("distributed.memory_limit", absl::StrCat(limit.status().message(), ", \"auto\" or \"off\""));
    } else if (*limit <= 0) {
      err("distributed.memory_limit", absl::StrCat("must be positive, got \"", dist.memory_limit(), "\""));
    }
  }
  if (!(dist.timeout_s() > 0)) err("distributed.timeout_s", absl::StrCat("must be > 0, got ", dist.timeout_s()));
  if (dist.init_method() != "env://" &&
      !(absl::StartsWith(dist.init_method(), "file://") && dist.init_method().size() > 7)) {
    err("distributed.init_method", absl::StrCat("must be \"env://\" or \"file:///path\", got \"", dist.init_method(), "\""));
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

std::string SampleImagePath(const RunSpec& spec, int i) {
  const std::string& path = spec.eval().sample_images(i);
  const std::string& dir = spec.data().image_dir();
  if (dir.empty() || path.empty() || path[0] == '/') return path;
  return absl::StrCat(absl::StripSuffix(dir, "/"), "/", path);
}

lora::LoraConfig ToLoraConfig(const RunSpec& spec) {
  const LoraSpec& l = spec.lora();
  lora::LoraConfig c;
  c.r = l.r();
  c.alpha = l.alpha();
  c.dropout = l.dropout();
  c.use_rslora = l.use_rslora();
  c.use_dora = l.use_dora();
  c.init = l.init() == LoraSpec::gaussian ? lora::InitMode::kGaussian : lora::InitMode::kDefault;
  if (!l.target_regex().empty()) {
    c.target_regex = l.target_regex();
  } else {
    c.target_modules.assign(l.target_modules().begin(), l.target_modules().end());
  }
  c.layers_to_transform.assign(l.layers_to_transform().begin(), l.layers_to_transform().end());
  for (const auto& [k, v] : l.rank_pattern()) c.rank_pattern.emplace_back(k, v);
  for (const auto& [k, v] : l.alpha_pattern()) c.alpha_pattern.emplace_back(k, v);
  std::sort(c.rank_pattern.begin(), c.rank_pattern.end());
  std::sort(c.alpha_pattern.begin(), c.alpha_pattern.end());
  c.modules_to_save.assign(l.modules_to_save().begin(), l.modules_to_save().end());
  c.dtype = l.dtype() == LoraSpec::bf16 ? Dtype::kBf16 : Dtype::kF32;
  c.seed = spec.training().seed();
  c.base_model_name_or_path = spec.model().path();
  return c;
}

}  // namespace llmtrain::spec
