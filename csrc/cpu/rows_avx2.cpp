// The row loops for AVX2 + FMA + F16C: 8 float lanes. setup.py compiles this file with its
// own flags and CPU_CAPABILITY; rows.cpp picks one build at run time.
#include "rows_isa.h"
