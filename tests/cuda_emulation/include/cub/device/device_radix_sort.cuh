// Stands in for cub's header when the CUDA sources compile for the host emulation.
#pragma once
#include "../../../cub_emulation.h"
