// Emulated-device build: this name resolves here instead of to the CUDA toolkit / c10::cuda.
#pragma once
#include "../../../cuda_emu.h"
