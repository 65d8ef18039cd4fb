// Stands in for the CUDA header in tests/test_ops_cuda_emu builds.
#pragma once
#include "cuda_emu.h"
