// `kvp plan --hf config.json`: the KV-cache shape of a Hugging Face model config. The one C++
// file of the tool: nlohmann/json (already a build dependency of the library) parses the JSON,
// so every valid config.json is read, whatever else it holds. Nothing here throws across the C
// boundary.
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "kvp_tool.h"

namespace {

using nlohmann::json;

struct hf_error {
  std::string message;
};

// The field as a positive integer; absent or null gives 0. 4096.0 is accepted (some exporters
// write integers as floats); anything else is an error naming the field.
int64_t positive_int(const json &cfg, const char *field) {
  const auto it = cfg.find(field);
  if (it == cfg.end() || it->is_null()) return 0;
  if (it->is_number_unsigned() && it->get<uint64_t>() > 0 && it->get<uint64_t>() <= (uint64_t)INT64_MAX)
    return it->get<int64_t>();
  if (it->is_number_float()) {
    const double d = it->get<double>();
    if (d >= 1.0 && d < 9.2e18 && d == static_cast<double>(static_cast<int64_t>(d))) return static_cast<int64_t>(d);
  }
  throw hf_error{std::string("\"") + field + "\" is " + it->dump() + ", not a positive integer"};
}

int64_t required_int(const json &cfg, const char *field) {
  const int64_t v = positive_int(cfg, field);
  if (v == 0) throw hf_error{std::string("\"") + field + "\" is missing"};
  return v;
}

kvp_dtype torch_dtype(const json &cfg) {
  // transformers writes "torch_dtype"; versions from 4.56 write "dtype".
  const char *field = cfg.contains("torch_dtype") ? "torch_dtype" : "dtype";
  const auto it = cfg.find(field);
  if (it == cfg.end() || it->is_null()) return KVP_DTYPE_INVALID;  // not given: the default, bf16
  if (it->is_string()) {
    const std::string name = it->get<std::string>();
    if (name == "bfloat16") return KVP_DTYPE_BF16;
    if (name == "float16") return KVP_DTYPE_F16;
    if (name == "float32") return KVP_DTYPE_F32;
  }
  throw hf_error{std::string("\"") + field + "\" is " + it->dump() +
                 "; valid values are \"bfloat16\", \"float16\", \"float32\" (or pass --dtype)"};
}

// The object that describes the text model: the config itself, or its "text_config" (multimodal
// models such as Llava or Gemma 3).
const json &text_model(const json &root) {
  if (!root.is_object()) throw hf_error{"not a JSON object"};
  if (!root.contains("num_hidden_layers") && root.contains("text_config") && root["text_config"].is_object())
    return root["text_config"];
  return root;
}

kvp_tool_shape read_shape(const json &root) {
  const json &cfg = text_model(root);
  kvp_tool_shape s{};
  if (cfg.contains("kv_lora_rank") && !cfg["kv_lora_rank"].is_null())
    throw hf_error{"\"kv_lora_rank\" is set: multi-head latent attention (DeepSeek) keeps one latent vector per "
                   "token, not per-head keys and values; give the shape with flags"};
  s.layers = required_int(cfg, "num_hidden_layers");
  const int64_t heads = required_int(cfg, "num_attention_heads");
  s.kv_heads = positive_int(cfg, "num_key_value_heads");
  if (s.kv_heads == 0) s.kv_heads = heads;  // multi-head attention: one KV head per query head
  s.head_dim = positive_int(cfg, "head_dim");
  if (s.head_dim == 0) {
    const int64_t hidden = required_int(cfg, "hidden_size");
    if (hidden % heads != 0)
      throw hf_error{"no \"head_dim\", and \"hidden_size\" " + std::to_string(hidden) +
                     " is not a multiple of \"num_attention_heads\" " + std::to_string(heads)};
    s.head_dim = hidden / heads;
  }
  s.max_len = required_int(cfg, "max_position_embeddings");
  s.dtype = torch_dtype(cfg);
  return s;
}

}  // namespace

extern "C" int kvp_tool_read_hf_config(const char *path, kvp_tool_shape *out, char *err, size_t cap) {
  std::string why;
  try {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      why = "cannot open the file";
    } else {
      const json root = json::parse(in);
      *out = read_shape(root);
      return 0;
    }
  } catch (const hf_error &e) {
    why = e.message;
  } catch (const json::parse_error &e) {
    why = std::string("not valid JSON: ") + e.what();
  } catch (const std::exception &e) {
    why = e.what();
  } catch (...) {
    why = "unexpected error";
  }
  std::snprintf(err, cap, "%s: %s", path, why.c_str());
  return -1;
}
