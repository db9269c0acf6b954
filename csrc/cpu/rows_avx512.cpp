// The row loops for AVX-512 F/BW/VL/DQ: 16 float lanes, masked tails. setup.py compiles this file with its
// own flags and CPU_CAPABILITY; rows.cpp picks one build at run time.
#include "rows_isa.h"
