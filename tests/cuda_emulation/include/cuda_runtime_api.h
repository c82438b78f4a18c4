// Stands in for the CUDA runtime header when the CUDA sources compile for the host emulation.
#pragma once
#include "../cuda_emulation.h"
