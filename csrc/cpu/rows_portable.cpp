// The row loops for no instruction-set extension: runs on any CPU. setup.py compiles this file with its
// own flags and CPU_CAPABILITY; rows.cpp picks one build at run time.
#include "rows_isa.h"
