#include "cli/commands.hpp"
#include "data/source.hpp"
#include "io/outputs.hpp"

namespace saescale::cli {

std::vector<std::string> input_files(const Config& cfg) {
  std::vector<std::string> inputs = data_files(cfg.data);
  for (const auto& f : io::weights_files(cfg.init)) inputs.push_back(f);
  if (!cfg.ground_truth.empty()) inputs.push_back(cfg.ground_truth);
  for (const auto& f : cfg.config_files) inputs.push_back(f);
  return inputs;
}

}  // namespace saescale::cli
