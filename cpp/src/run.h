// A run of the client: every image of a folder through the model, in batches, then a summary.
#pragma once

#include <string>

#include "options.h"

namespace classify {

// A whole command: parses argv (with the `more` switches, if any), classifies the folder, and turns errors
// into a message on stderr. Returns the exit status main.cpp describes: 0 every image file classified, 1 some
// skipped, 2 bad usage, 3 inference failed. `usage` is printed by --help and after usage errors that call for it.
int run_command_line(int argc, char** argv, const std::string& usage, const MoreSwitches& more = nullptr);

}  // namespace classify
