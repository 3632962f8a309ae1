/* Registers pair_style nnmd with LAMMPS: `plugin load /path/to/nnmdplugin.so`. */
#include "lammpsplugin.h"

#include "pair_nnmd.h"

using namespace LAMMPS_NS;

#ifndef NNMD_LAMMPS_VERSION
#define NNMD_LAMMPS_VERSION "22 Jul 2025"
#endif

static Pair *nnmd_creator(LAMMPS *lmp)
{
  return new PairNNMD(lmp);
}

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  lammpsplugin_t plugin;
  auto register_plugin = (lammpsplugin_regfunc) regfunc;
  plugin.version = NNMD_LAMMPS_VERSION;
  plugin.style = "pair";
  plugin.name = "nnmd";
  plugin.info = "nnmd Behler-Parrinello NNP (Chebyshev descriptor, ensembles, Delta baseline) v1";
  plugin.author = "nnmd";
  plugin.creator.v1 = (lammpsplugin_factory1 *) &nnmd_creator;
  plugin.handle = handle;
  (*register_plugin)(&plugin, lmp);
}
