/* pair_style nnmd: see pair_nnmd.h and docs/md.md ("pair_style nnmd in your own
   LAMMPS scripts"). The algebra follows nnmd_kernels/descriptor_ref.py,
   network.py, baseline.py and potential.py (Potential.compute_pairs) term by term:

     E_i = e0[e_i] + (1/M) sum_m NN_{e_i,m}((G_i - mu) / sigma) + 1/2 sum_j phi(r_ij)

   Full neighbour list, newton pair on: the pair gradients g_ij = dE_i/dr_ij of a
   local centre i go to F_i += g_ij and F_j -= g_ij (j may be a ghost; LAMMPS
   reverse-communicates ghost forces), the virial is -sum r_ij (x) g_ij and each
   pair term's virial is split half to i, half to j for the per-atom virial.

   How one centre is computed (PairNNMD::centre), for speed:
   - its neighbours are gathered once as structure-of-arrays, sorted by element;
   - the channel weights depend only on the element (radial) or the element pair
     (angular, symmetric), so the Chebyshev sums run once per element / element pair
     ("class") and the channels are mixed afterwards: G_c = sum_class w_c,class S_class;
     the triplets (a < b) are written class by class into flat arrays (cos, angle
     variable, its derivative, fc_a fc_b);
   - forward: sum_t w_t T_k(x_t) with the recurrence run in W independent lanes (k
     inner, lanes innermost: vectorises without reassociation, no per-k memory traffic
     but one accumulator row);
   - backward: with h = dE/dG mixed per class, sum_k h_k T_k(x) and its x-derivative
     (through the Chebyshev derivative coefficients) by Clenshaw's recurrence, again in
     W lanes; then one pass over the triplets turns them into pair gradients.
   The kernels (nnmd_simd.inc) are compiled for SSE2, AVX2 + FMA and AVX-512 and the
   widest one the CPU runs is picked at load (NNMD_PLUGIN_ISA=generic|avx2|avx512 caps
   it). The summation order differs from the Python kernels, so results agree to rounding
   (about 1e-15 relative), not bitwise. */

#include "pair_nnmd.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

using namespace LAMMPS_NS;

namespace {
const char *ACT_NAMES[] = {"twisted_tanh", "aenet_twist", "tanh", "sigmoid", "linear", "elu", "gelu"};
const int N_ACT = 7;
const double SIN_THETA_MIN = 1e-3;    // descriptor.py: collinear triplets add no force
const double MIN_DISTANCE = 0.1;      // neighbors.py: atoms closer than this are refused
const double INV_SQRT2 = 0.7071067811865476;
const double INV_SQRT_2PI = 0.3989422804014327;
const int CHUNK = 32;                 // centres per work item when threaded

// Chebyshev derivative coefficients: sum_k hd_k T_k = d/dx sum_k h_k T_k (k < n)
inline void cheb_deriv(const double *h, int n, double *hd)
{
  for (int k = 0; k < n; k++) hd[k] = 0.0;
  if (n < 2) return;
  hd[n - 2] = 2.0 * (n - 1) * h[n - 1];
  for (int k = n - 3; k >= 0; k--) hd[k] = hd[k + 2] + 2.0 * (k + 1) * h[k + 1];
  hd[0] *= 0.5;
}

using Clock = std::chrono::steady_clock;
inline double since(Clock::time_point &t)
{
  Clock::time_point now = Clock::now();
  double d = std::chrono::duration<double>(now - t).count();
  t = now;
  return d;
}
}    // namespace

/* the Chebyshev kernels (nnmd_simd.inc) per instruction set; x86-64 with GCC: SSE2 (the
   baseline), AVX2 + FMA and AVX-512, chosen at run time; elsewhere the portable build */
namespace nnmd_generic {
#define NNMD_VW 2
#define NNMD_NV_SUMS 4
#define NNMD_NV_SERIES 2
#include "nnmd_simd.inc"
#undef NNMD_VW
#undef NNMD_NV_SUMS
#undef NNMD_NV_SERIES
}    // namespace nnmd_generic

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define NNMD_MULTI_ISA 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace nnmd_avx2 {
#define NNMD_VW 4
#define NNMD_NV_SUMS 4
#define NNMD_NV_SERIES 2
#include "nnmd_simd.inc"
#undef NNMD_VW
#undef NNMD_NV_SUMS
#undef NNMD_NV_SERIES
}    // namespace nnmd_avx2
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
namespace nnmd_avx512 {
#define NNMD_VW 8
#define NNMD_NV_SUMS 2
#define NNMD_NV_SERIES 4
#include "nnmd_simd.inc"
#undef NNMD_VW
#undef NNMD_NV_SUMS
#undef NNMD_NV_SERIES
}    // namespace nnmd_avx512
#pragma GCC pop_options
#endif

namespace {
#define NNMD_KERNELS(ns) {#ns + 5, ns::cheb_sums, ns::cheb_series, ns::angles_theta}
const PairNNMD::Kernels KERNELS_GENERIC = NNMD_KERNELS(nnmd_generic);
#ifdef NNMD_MULTI_ISA
const PairNNMD::Kernels KERNELS_AVX2 = NNMD_KERNELS(nnmd_avx2);
const PairNNMD::Kernels KERNELS_AVX512 = NNMD_KERNELS(nnmd_avx512);
#endif

/* the widest kernels this CPU runs; NNMD_PLUGIN_ISA=generic|avx2|avx512 asks for
   narrower ones (tests compare them) */
const PairNNMD::Kernels *pick_kernels()
{
  const char *want = std::getenv("NNMD_PLUGIN_ISA");
  std::string w = want ? want : "";
#ifdef NNMD_MULTI_ISA
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f");
  if (avx512 && (w.empty() || w == "avx512")) return &KERNELS_AVX512;
  if (avx2 && (w.empty() || w == "avx512" || w == "avx2")) return &KERNELS_AVX2;
#endif
  return &KERNELS_GENERIC;
}
}    // namespace

/* per-thread buffers of one centre atom; they only grow */
struct PairNNMD::Scratch {
  // neighbours within the model cutoff in list order, then sorted by element
  std::vector<int> lj, lt, j;
  std::vector<double> lx, ly, lz, lr, dx, dy, dz, r;
  std::vector<int> tstart;    // element runs of the sorted neighbours (ne + 1)
  // radial: Chebyshev argument, cutoff and derivative, the two sums of the backward pass
  std::vector<double> rx, rfc, rdfc, rS, rdS;
  // angular neighbours (d < R_a, sorted by element): index, unit vector, 1/d, cutoff
  std::vector<int> ap, astart;
  std::vector<double> ux, uy, uz, ainv, afc, adfc, glx, gly, glz;
  // triplets by element-pair class: cos, angle variable, d x / d cos, fc_a fc_b, sums
  std::vector<size_t> coff, cur;
  std::vector<double> tc, tx, tdx, tw, tS, tdS;
  std::vector<double> accbuf, Gt, H, Hd;    // accbuf: the kernels' lanes (64-byte aligned)
  double *acc = nullptr;
  // networks
  std::vector<double> G, dG, xin, zbuf, abuf, dfbuf, delta, delta2, ym;
  // results: pair gradients dE_i / dr_ij, energy, ensemble spread, finite flag
  std::vector<double> gx, gy, gz;
  int np = 0, finite = 1, bad_j = -1;
  double energy = 0.0, estd = 0.0, bad_d = 0.0;
  double prof[10] = {0};
  bigint centres = 0;

  void grow_list(size_t n)
  {
    if (lj.size() >= n) return;
    n = std::max<size_t>(n + n / 2, 64);
    for (auto *v : {&lj, &lt, &j, &ap}) v->resize(n);
    for (auto *v : {&lx, &ly, &lz, &lr, &dx, &dy, &dz, &r, &rx, &rfc, &rdfc, &rS, &rdS, &ux, &uy, &uz, &ainv,
                    &afc, &adfc, &glx, &gly, &glz, &gx, &gy, &gz})
      v->resize(n);
  }
  void grow_triplets(size_t n)
  {
    if (tc.size() >= n) return;
    n = std::max<size_t>(n + n / 2, 256);
    for (auto *v : {&tc, &tx, &tdx, &tw, &tS, &tdS}) v->resize(n);
  }
};

/* ---------------------------------------------------------------------- */

PairNNMD::PairNNMD(LAMMPS *lmp) : Pair(lmp)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  no_virial_fdotr_compute = 1;    // the virial is accumulated explicitly, pair by pair
  centroidstressflag = CENTROID_NOTAVAIL;
  ne = nr = na = cr = ca = nfeat = nmodels = act = 0;
  rr = ra = rcmax = rb = 0.0;
  cutoff_tanh = angle_theta = 1;
  has_baseline = 0;
  for (int q = 0; q < 4; q++) brp[q] = brp1[q] = 0.0;
  nthreads_req = 1;
  estd = nullptr;
  nmax = 0;
  ncalls = 0;
  const char *p = std::getenv("NNMD_PLUGIN_PROFILE");
  profile = (p && *p && strcmp(p, "0") != 0) ? 1 : 0;
  for (double &v : prof) v = 0.0;
  prof_centres = 0;
  K = pick_kernels();
}

PairNNMD::~PairNNMD()
{
  if (copymode) return;
  if (profile) {
    double t[10] = {0};
    bigint n = 0;
    for (auto &s : scratch) {
      for (int q = 0; q < 9; q++) t[q] += s->prof[q];
      n += s->centres;
    }
    t[9] = prof[9];
    const char *names[10] = {"gather", "rad-fwd", "tri-geom", "ang-fwd", "network",
                             "rad-bwd", "ang-clenshaw", "ang-forces", "baseline", "scatter"};
    double tot = 0.0;
    for (double v : t) tot += v;
    std::string line = fmt::format("nnmd profile (rank {}, {} centres, {} thread(s), {} kernels): us/centre",
                                   comm->me, n, (int) scratch.size(), K->name);
    for (int q = 0; q < 10; q++) line += fmt::format(" {} {:.2f}", names[q], n ? 1e6 * t[q] / n : 0.0);
    line += fmt::format(" | total {:.2f} (thread time)\n", n ? 1e6 * tot / n : 0.0);
    fputs(line.c_str(), stderr);
  }
  delete[] pvector;
  pvector = nullptr;
  memory->destroy(estd);
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
  }
}

void PairNNMD::allocate()
{
  allocated = 1;
  int n = atom->ntypes;
  memory->create(setflag, n + 1, n + 1, "pair:setflag");
  for (int i = 1; i <= n; i++)
    for (int j = i; j <= n; j++) setflag[i][j] = 0;
  memory->create(cutsq, n + 1, n + 1, "pair:cutsq");
  map.assign(n + 1, -1);
}

/* ---------------------------------------------------------------------- */

/* pair_style nnmd [threads N|auto] */

void PairNNMD::settings(int narg, char **arg)
{
  nthreads_req = 1;
  int iarg = 0;
  while (iarg < narg) {
    if (strcmp(arg[iarg], "threads") == 0 && iarg + 1 < narg) {
      if (strcmp(arg[iarg + 1], "auto") == 0) {
        nthreads_req = 0;
      } else {
        char *end = nullptr;
        long v = strtol(arg[iarg + 1], &end, 10);
        if (!end || *end || v < 1 || v > 1024)
          error->all(FLERR, "pair_style nnmd threads N: N must be a whole number >= 1 or auto, got {}",
                     arg[iarg + 1]);
        nthreads_req = (int) v;
      }
      iarg += 2;
    } else {
      error->all(FLERR, "pair_style nnmd [threads N|auto]: unknown argument {} (the model is named in pair_coeff)",
                 arg[iarg]);
    }
  }
}
/* pair_coeff * * MODEL El1 El2 ... (one element or NULL per atom type) */

void PairNNMD::coeff(int narg, char **arg)
{
  if (!allocated) allocate();
  int ntypes = atom->ntypes;
  if (narg != 3 + ntypes)
    error->all(FLERR, "pair_coeff * * MODEL El1 ... ElN: need one element (or NULL) per atom type ({} types), got {}",
               ntypes, narg - 3);
  if (strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR, "pair_style nnmd: use pair_coeff * * MODEL El1 ... ElN");

  // rank 0 reads the file, every rank parses the same text
  std::string text;
  int len = 0;
  if (comm->me == 0) {
    std::ifstream in(arg[2], std::ios::binary);
    if (!in) {
      len = -1;
    } else {
      std::stringstream ss;
      ss << in.rdbuf();
      text = ss.str();
      len = (int) text.size();
    }
  }
  MPI_Bcast(&len, 1, MPI_INT, 0, world);
  if (len < 0)
    error->all(FLERR, "pair_style nnmd: cannot open model file {} (write one with: nnmd export MODEL --format lammps -o DIR)",
               arg[2]);
  text.resize(len);
  MPI_Bcast(&text[0], len, MPI_CHAR, 0, world);
  model_file = arg[2];
  read_model(text);

  for (int i = 1; i <= ntypes; i++) {
    const char *el = arg[2 + i];
    map[i] = -1;
    if (strcmp(el, "NULL") == 0) continue;
    for (int e = 0; e < ne; e++)
      if (elements[e].symbol == el) map[i] = e;
    if (map[i] < 0) {
      std::string known;
      for (auto &e : elements) known += " " + e.symbol;
      error->all(FLERR, "pair_style nnmd: element {} (atom type {}) is not in the model {}; the model knows:{}",
                 el, i, model_file, known);
    }
  }
  int count = 0;
  for (int i = 1; i <= ntypes; i++)
    for (int j = i; j <= ntypes; j++) {
      setflag[i][j] = (map[i] >= 0 && map[j] >= 0) ? 1 : 0;
      count += setflag[i][j];
    }
  if (count == 0) error->all(FLERR, "pair_style nnmd: no atom type is mapped to an element");
}

/* parse the "nnmd-lammps 1" text model (orchestrator/commands/lammps.py writes it) */

void PairNNMD::read_model(const std::string &text)
{
  std::istringstream in(text);
  std::string word;
  auto expect = [&](const char *key) {
    if (!(in >> word) || word != key)
      error->all(FLERR, "pair_style nnmd: model file {}: expected '{}', found '{}' (not an nnmd-lammps model? "
                 "write one with: nnmd export MODEL --format lammps -o DIR)", model_file, key, word);
  };
  auto num = [&]() {
    double v;
    if (!(in >> v)) error->all(FLERR, "pair_style nnmd: model file {} is truncated or corrupt", model_file);
    return v;
  };
  auto inum = [&]() { return (int) num(); };
  auto str = [&]() {
    std::string s;
    if (!(in >> s)) error->all(FLERR, "pair_style nnmd: model file {} is truncated or corrupt", model_file);
    return s;
  };

  expect("nnmd-lammps");
  int version = inum();
  if (version != 1)
    error->all(FLERR, "pair_style nnmd: model file {} has format version {}; this plugin reads version 1 "
               "(rebuild it: nnmd lammps plugin)", model_file, version);
  expect("species");
  ne = inum();
  if (ne < 1) error->all(FLERR, "pair_style nnmd: model file {}: no species", model_file);
  elements.assign(ne, Element());
  for (int e = 0; e < ne; e++) elements[e].symbol = str();
  expect("descriptor");
  nr = inum();
  na = inum();
  rr = num();
  ra = num();
  std::string cfn = str(), ang = str();
  if (cfn == "tanh") cutoff_tanh = 1;
  else if (cfn == "cos") cutoff_tanh = 0;
  else error->all(FLERR, "pair_style nnmd: cutoff function {} is not supported (tanh, cos)", cfn);
  if (ang == "theta") angle_theta = 1;
  else if (ang == "cos") angle_theta = 0;
  else error->all(FLERR, "pair_style nnmd: angle variable {} is not supported (theta, cos)", ang);
  expect("weighting");
  str();    // name, informational: the channel weights below are explicit
  cr = inum();
  ca = inum();
  if (na == 0) ca = 0;
  wrad.resize((size_t) cr * ne);
  wang.resize((size_t) ca * ne * ne);
  expect("w_rad");
  for (auto &v : wrad) v = num();
  expect("w_ang");
  for (auto &v : wang) v = num();
  nfeat = cr * nr + ca * na;
  expect("activation");
  std::string aname = str();
  act = -1;
  for (int k = 0; k < N_ACT; k++)
    if (aname == ACT_NAMES[k]) act = k;
  if (act < 0) error->all(FLERR, "pair_style nnmd: activation {} is not supported", aname);
  expect("n_models");
  nmodels = inum();
  if (nmodels < 1) error->all(FLERR, "pair_style nnmd: model file {}: n_models < 1", model_file);
  for (int e = 0; e < ne; e++) {
    Element &el = elements[e];
    expect("element");
    if (str() != el.symbol) error->all(FLERR, "pair_style nnmd: model file {}: element blocks out of order", model_file);
    expect("e0");
    el.e0 = num();
    expect("mean");
    el.mean.resize(nfeat);
    for (auto &v : el.mean) v = num();
    expect("std");
    el.std.resize(nfeat);
    for (auto &v : el.std) v = num();
    expect("layers");
    int nl = inum();
    std::vector<int> sizes(nl + 1);
    for (auto &s : sizes) s = inum();
    if (nl < 1 || sizes[0] != nfeat || sizes[nl] != 1)
      error->all(FLERR, "pair_style nnmd: model file {}: network of {} does not map {} features to 1 energy",
                 model_file, el.symbol, nfeat);
    el.layers.resize(nl);
    for (int l = 0; l < nl; l++) {
      el.layers[l].nin = sizes[l];
      el.layers[l].nout = sizes[l + 1];
      el.layers[l].w.resize((size_t) nmodels * sizes[l] * sizes[l + 1]);
      el.layers[l].b.resize((size_t) nmodels * sizes[l + 1]);
    }
    for (int m = 0; m < nmodels; m++)
      for (int l = 0; l < nl; l++) {
        Layer &L = el.layers[l];
        expect("W");
        double *w = &L.w[(size_t) m * L.nin * L.nout];
        for (int k = 0; k < L.nin * L.nout; k++) w[k] = num();
        expect("b");
        for (int k = 0; k < L.nout; k++) L.b[(size_t) m * L.nout + k] = num();
      }
  }
  expect("baseline");
  has_baseline = inum();
  rb = 0.0;
  if (has_baseline) {
    rb = num();
    bcoef.resize((size_t) ne * ne * 4);
    for (auto &v : bcoef) v = num();
  }
  expect("end");

  rcmax = (na > 0) ? std::max(rr, ra) : rr;
  if (has_baseline) rcmax = std::max(rcmax, rb);
  if (has_baseline) {
    const double P[4] = {12.0, 10.0, 8.0, 6.0};
    for (int q = 0; q < 4; q++) {
      brp[q] = std::pow(rb, -P[q]);
      brp1[q] = P[q] * std::pow(rb, -(P[q] + 1.0));
    }
  }
  // the triplet classes use w_ang[c, e1, e2] with e1 <= e2: every weighting is symmetric
  for (int c = 0; c < ca; c++)
    for (int a = 0; a < ne; a++)
      for (int b = 0; b < a; b++) {
        double u = wang[(c * ne + a) * ne + b], v = wang[(c * ne + b) * ne + a];
        if (std::fabs(u - v) > 1e-12 * std::max(std::fabs(u), std::fabs(v)))
          error->all(FLERR, "pair_style nnmd: model file {}: angular channel weights are not symmetric in "
                     "the two neighbour elements", model_file);
      }

  // compute pair nnmd (summed over ranks): the ensemble members' network energies (M),
  // the number of centre atoms whose energy or gradients were not finite (for a `fix halt`
  // guard), and the number of force evaluations (each rank adds ncalls / nprocs)
  delete[] pvector;
  nextra = nmodels + 2;
  pvector = new double[nextra];
  for (int m = 0; m < nextra; m++) pvector[m] = 0.0;
  scratch.clear();    // sized for this model on first use
}

/* ---------------------------------------------------------------------- */

void PairNNMD::init_style()
{
  if (force->newton_pair == 0) error->all(FLERR, "pair_style nnmd requires newton pair on");
  if (strcmp(update->unit_style, "metal") != 0)
    error->all(FLERR, "pair_style nnmd requires units metal (Angstrom, eV), not {}", update->unit_style);
  if (ne == 0) error->all(FLERR, "pair_style nnmd: no model (pair_coeff * * MODEL El1 ...)");
  neighbor->add_request(this, NeighConst::REQ_FULL);
}

double PairNNMD::init_one(int i, int j)
{
  if (setflag[i][j] == 0) error->all(FLERR, "pair_style nnmd: all pair coeffs are not set");
  return rcmax;
}

void *PairNNMD::extract_peratom(const char *name, int &ncol)
{
  if (strcmp(name, "energy_std") == 0) {
    ncol = 0;
    return (void *) estd;
  }
  return nullptr;
}

double PairNNMD::memory_usage()
{
  double bytes = Pair::memory_usage();
  for (auto &el : elements)
    for (auto &L : el.layers) bytes += 8.0 * (L.w.size() + L.b.size());
  bytes += 8.0 * nmax;
  for (auto &s : scratch) bytes += 8.0 * (30.0 * s->lj.size() + 6.0 * s->tc.size());
  for (auto &c : chunk_d) bytes += 8.0 * c.capacity();
  for (auto &c : chunk_i) bytes += 4.0 * c.capacity();
  return bytes;
}

/* ---------------------------------------------------------------------- */

inline void PairNNMD::act_fdf(double x, double &f, double &df) const
{
  switch (act) {
    case 0: {
      double t = std::tanh(x);
      f = t + 0.16 * x;
      df = 1.0 - t * t + 0.16;
      return;
    }
    case 1: {
      double t = std::tanh(2.0 / 3.0 * x);
      f = 1.7159 * t + 0.1 * x;
      df = 1.7159 * (2.0 / 3.0) * (1.0 - t * t) + 0.1;
      return;
    }
    case 2: {
      double t = std::tanh(x);
      f = t;
      df = 1.0 - t * t;
      return;
    }
    case 3: {
      double s = 0.5 * (1.0 + std::tanh(0.5 * x));
      f = s;
      df = s * (1.0 - s);
      return;
    }
    case 4:
      f = x;
      df = 1.0;
      return;
    case 5:
      if (x > 0) {
        f = x;
        df = 1.0;
      } else {
        f = std::expm1(x);
        df = std::exp(x);
      }
      return;
    default: {
      double phi = 0.5 * std::erfc(-INV_SQRT2 * x);
      f = x * phi;
      df = phi + x * (INV_SQRT_2PI * std::exp(-0.5 * x * x));
      return;
    }
  }
}

inline void PairNNMD::cutoff(double r, double rc, double &fc, double &dfc) const
{
  if (r >= rc) {
    fc = dfc = 0.0;
    return;
  }
  if (cutoff_tanh) {
    double t = std::tanh(1.0 - r / rc);
    fc = t * t * t;
    dfc = -3.0 * t * t * (1.0 - t * t) / rc;
  } else {
    fc = 0.5 * (std::cos(M_PI * r / rc) + 1.0);
    dfc = -0.5 * M_PI / rc * std::sin(M_PI * r / rc);
  }
}

/* ---------------------------------------------------------------------- */

/* one centre atom i (element map[type[i]] >= 0): fills s.np neighbours (s.j, s.dx..),
   their pair gradients s.gx.., s.energy, s.ym, s.estd, s.finite; s.bad_j >= 0 when two
   atoms are closer than MIN_DISTANCE (nothing else is then valid). Thread-safe. */

void PairNNMD::centre(Scratch &s, int i, const double *const *x, const int *type, const int *jlist,
                      int jnum) const
{
  Clock::time_point tp;
  if (profile) tp = Clock::now();
  const int ei = map[type[i]];
  const Element &el = elements[ei];
  const double xi = x[i][0], yi = x[i][1], zi = x[i][2];
  const double rcsq = rcmax * rcmax;
  s.bad_j = -1;
  s.centres++;

  // 1. neighbours within the model cutoff (mapped types only), then sorted by element
  s.grow_list(jnum);
  int *cnt = s.tstart.data();
  for (int t = 0; t <= ne; t++) cnt[t] = 0;
  int n = 0;
  for (int jj = 0; jj < jnum; jj++) {
    const int j = jlist[jj] & NEIGHMASK;
    const int ej = map[type[j]];
    if (ej < 0) continue;
    const double dx = x[j][0] - xi, dy = x[j][1] - yi, dz = x[j][2] - zi;
    const double rsq = dx * dx + dy * dy + dz * dz;
    if (rsq >= rcsq) continue;
    s.lj[n] = j;
    s.lt[n] = ej;
    s.lx[n] = dx;
    s.ly[n] = dy;
    s.lz[n] = dz;
    s.lr[n] = rsq;
    cnt[ej + 1]++;
    n++;
  }
  for (int t = 0; t < ne; t++) cnt[t + 1] += cnt[t];    // tstart: prefix sums
  {
    int *cur = s.astart.data();    // as a cursor here
    for (int t = 0; t < ne; t++) cur[t] = cnt[t];
    for (int q = 0; q < n; q++) {
      const int p = cur[s.lt[q]]++;
      s.j[p] = s.lj[q];
      s.dx[p] = s.lx[q];
      s.dy[p] = s.ly[q];
      s.dz[p] = s.lz[q];
      s.r[p] = std::sqrt(s.lr[q]);
    }
  }
  const int np = s.np = n;
  const int *tstart = s.tstart.data();
  for (int p = 0; p < np; p++)
    if (s.r[p] < MIN_DISTANCE) {
      s.bad_j = s.j[p];
      s.bad_d = s.r[p];
      return;
    }
  double *G = s.G.data();
  std::fill(s.G.begin(), s.G.end(), 0.0);
  if (profile) s.prof[0] += since(tp);

  // 2. radial: per element t, S_t,k = sum_j fc T_k(x_j); G_ck = sum_t w_ct S_t,k
  double *Gt = s.Gt.data(), *acc = s.acc;
  for (int p = 0; p < np; p++) {
    cutoff(s.r[p], rr, s.rfc[p], s.rdfc[p]);
    s.rx[p] = std::min(1.0, std::max(-1.0, 2.0 * s.r[p] / rr - 1.0));
  }
  for (int t = 0; t < ne; t++) {
    const int p0 = tstart[t], nt = tstart[t + 1] - p0;
    if (nt == 0) continue;
    K->sums(&s.rx[p0], &s.rfc[p0], nt, nr, acc, Gt);
    for (int c = 0; c < cr; c++) {
      const double w = wrad[c * ne + t];
      if (w == 0.0) continue;
      double *Gc = G + (size_t) c * nr;
      for (int k = 0; k < nr; k++) Gc[k] += w * Gt[k];
    }
  }
  if (profile) s.prof[1] += since(tp);

  // 3. angular neighbours and the triplets (a < b in element order), class by class
  const int aoff = cr * nr;
  int ma = 0;
  size_t ntri = 0;
  int *astart = s.astart.data();
  size_t *coff = s.coff.data(), *cur = s.cur.data();
  if (na > 0) {
    for (int t = 0; t < ne; t++) {
      astart[t] = ma;
      for (int p = tstart[t]; p < tstart[t + 1]; p++) {
        const double d = s.r[p];
        if (d >= ra) continue;
        s.ap[ma] = p;
        s.ux[ma] = s.dx[p] / d;
        s.uy[ma] = s.dy[p] / d;
        s.uz[ma] = s.dz[p] / d;
        s.ainv[ma] = 1.0 / d;
        cutoff(d, ra, s.afc[ma], s.adfc[ma]);
        ma++;
      }
    }
    astart[ne] = ma;
    for (int t1 = 0; t1 < ne; t1++)
      for (int t2 = t1; t2 < ne; t2++) {
        const size_t n1 = astart[t1 + 1] - astart[t1], n2 = astart[t2 + 1] - astart[t2];
        coff[t1 * ne + t2] = ntri;
        cur[t1 * ne + t2] = ntri;
        ntri += (t1 == t2) ? n1 * (n1 > 0 ? n1 - 1 : 0) / 2 : n1 * n2;
      }
    s.grow_triplets(ntri);
    const double *ux = s.ux.data(), *uy = s.uy.data(), *uz = s.uz.data(), *afc = s.afc.data();
    for (int t1 = 0; t1 < ne; t1++)
      for (int a = astart[t1]; a < astart[t1 + 1]; a++) {
        const double uax = ux[a], uay = uy[a], uaz = uz[a], fa = afc[a];
        for (int t2 = t1; t2 < ne; t2++) {
          const int b0 = (t2 == t1) ? a + 1 : astart[t2], nb = astart[t2 + 1] - b0;
          if (nb <= 0) continue;
          const size_t pos = cur[t1 * ne + t2];
          cur[t1 * ne + t2] += nb;
          double *tc = &s.tc[pos], *tw = &s.tw[pos];
          const double *uxb = ux + b0, *uyb = uy + b0, *uzb = uz + b0, *fb = afc + b0;
          for (int q = 0; q < nb; q++) {
            tc[q] = uax * uxb[q] + uay * uyb[q] + uaz * uzb[q];
            tw[q] = fa * fb[q];
          }
        }
      }
    {
      const double *tc = s.tc.data();
      double *tx = s.tx.data(), *tdx = s.tdx.data();
      if (angle_theta) {
        K->angles(tc, ntri, tx, tdx);
      } else {
        for (size_t q = 0; q < ntri; q++) {
          tx[q] = std::min(1.0, std::max(-1.0, tc[q]));
          tdx[q] = 1.0;
        }
      }
    }
    if (profile) s.prof[2] += since(tp);
    for (int t1 = 0; t1 < ne; t1++)
      for (int t2 = t1; t2 < ne; t2++) {
        const size_t o = coff[t1 * ne + t2];
        const int nt = (int) (cur[t1 * ne + t2] - o);
        if (nt == 0) continue;
        K->sums(&s.tx[o], &s.tw[o], nt, na, acc, Gt);
        for (int c = 0; c < ca; c++) {
          const double w = wang[(c * ne + t1) * ne + t2];
          if (w == 0.0) continue;
          double *Gc = G + aoff + (size_t) c * na;
          for (int k = 0; k < na; k++) Gc[k] += w * Gt[k];
        }
      }
    if (profile) s.prof[3] += since(tp);
  }

  // 4. networks: ensemble mean energy and dE/dG
  network(s, el);
  const double *dG = s.dG.data();
  double *H = s.H.data(), *Hd = s.Hd.data();
  if (profile) s.prof[4] += since(tp);

  // 5. radial backward: h_t,k = sum_c w_ct dE/dG_ck; dE/dr through fc and T_k(x)
  for (int t = 0; t < ne; t++) {
    const int p0 = tstart[t], nt = tstart[t + 1] - p0;
    if (nt == 0) continue;
    for (int k = 0; k < nr; k++) H[k] = 0.0;
    for (int c = 0; c < cr; c++) {
      const double w = wrad[c * ne + t];
      if (w == 0.0) continue;
      for (int k = 0; k < nr; k++) H[k] += w * dG[c * nr + k];
    }
    cheb_deriv(H, nr, Hd);
    K->series(&s.rx[p0], nt, H, Hd, nr, &s.rS[p0], &s.rdS[p0]);
  }
  {
    const double dxr = 2.0 / rr;
    for (int p = 0; p < np; p++) {
      const double e_r = s.rdS[p] * dxr * s.rfc[p] + s.rS[p] * s.rdfc[p];
      const double sd = e_r / s.r[p];
      s.gx[p] = sd * s.dx[p];
      s.gy[p] = sd * s.dy[p];
      s.gz[p] = sd * s.dz[p];
    }
  }
  if (profile) s.prof[5] += since(tp);

  // 6. angular backward
  if (na > 0 && ma > 1) {
    for (int t1 = 0; t1 < ne; t1++)
      for (int t2 = t1; t2 < ne; t2++) {
        const size_t o = coff[t1 * ne + t2];
        const int nt = (int) (cur[t1 * ne + t2] - o);
        if (nt == 0) continue;
        for (int k = 0; k < na; k++) H[k] = 0.0;
        for (int c = 0; c < ca; c++) {
          const double w = wang[(c * ne + t1) * ne + t2];
          if (w == 0.0) continue;
          for (int k = 0; k < na; k++) H[k] += w * dG[aoff + c * na + k];
        }
        cheb_deriv(H, na, Hd);
        K->series(&s.tx[o], nt, H, Hd, na, &s.tS[o], &s.tdS[o]);
        cur[t1 * ne + t2] = o;    // rewound for the force pass
      }
    if (profile) s.prof[6] += since(tp);
    const double *ux = s.ux.data(), *uy = s.uy.data(), *uz = s.uz.data(), *afc = s.afc.data(),
                 *adfc = s.adfc.data(), *ainv = s.ainv.data();
    double *glx = s.glx.data(), *gly = s.gly.data(), *glz = s.glz.data();
    std::fill(glx, glx + ma, 0.0);
    std::fill(gly, gly + ma, 0.0);
    std::fill(glz, glz + ma, 0.0);
    // d cos / d r_a = (u_b - cos u_a) / |r_a|
    for (int t1 = 0; t1 < ne; t1++)
      for (int a = astart[t1]; a < astart[t1 + 1]; a++) {
        const double uax = ux[a], uay = uy[a], uaz = uz[a], fa = afc[a], dfa = adfc[a], ia = ainv[a];
        double sx = 0.0, sy = 0.0, sz = 0.0, sa = 0.0;
        for (int t2 = t1; t2 < ne; t2++) {
          const int b0 = (t2 == t1) ? a + 1 : astart[t2], nb = astart[t2 + 1] - b0;
          if (nb <= 0) continue;
          const size_t pos = cur[t1 * ne + t2];
          cur[t1 * ne + t2] += nb;
          const double *tc = &s.tc[pos], *tdx = &s.tdx[pos], *tw = &s.tw[pos], *S = &s.tS[pos],
                       *dS = &s.tdS[pos];
          for (int q = 0; q < nb; q++) {
            const int b = b0 + q;
            const double c = tc[q];
            const double e_cos = dS[q] * tdx[q] * tw[q];
            const double e_ra = S[q] * dfa * afc[b];
            const double e_rb = S[q] * fa * adfc[b];
            sx += e_cos * ux[b];
            sy += e_cos * uy[b];
            sz += e_cos * uz[b];
            sa += e_ra - e_cos * c * ia;
            const double eb = e_cos * ainv[b];
            const double cb = e_rb - eb * c;
            glx[b] += eb * uax + cb * ux[b];
            gly[b] += eb * uay + cb * uy[b];
            glz[b] += eb * uaz + cb * uz[b];
          }
        }
        glx[a] += sx * ia + sa * uax;
        gly[a] += sy * ia + sa * uay;
        glz[a] += sz * ia + sa * uaz;
      }
    for (int a = 0; a < ma; a++) {
      const int p = s.ap[a];
      s.gx[p] += glx[a];
      s.gy[p] += gly[a];
      s.gz[p] += glz[a];
    }
    if (profile) s.prof[7] += since(tp);
  }

  // 7. Delta baseline: half of each directed pair to its centre
  if (has_baseline) {
    const double P[4] = {12.0, 10.0, 8.0, 6.0};
    for (int t = 0; t < ne; t++) {
      const double *A = &bcoef[((size_t) ei * ne + t) * 4];
      for (int p = tstart[t]; p < tstart[t + 1]; p++) {
        const double r = s.r[p];
        if (r >= rb) continue;
        const double i2 = 1.0 / (r * r);
        const double i6 = i2 * i2 * i2, i8 = i6 * i2, i10 = i8 * i2;
        const double rp[4] = {i10 * i2, i10, i8, i6};
        double phi = 0.0, dphi = 0.0;
        for (int q = 0; q < 4; q++) {
          phi += A[q] * (rp[q] - brp[q] + brp1[q] * (r - rb));
          dphi += A[q] * (-P[q] * rp[q] / r + brp1[q]);
        }
        s.energy += 0.5 * phi;
        const double sd = 0.5 * dphi / r;
        s.gx[p] += sd * s.dx[p];
        s.gy[p] += sd * s.dy[p];
        s.gz[p] += sd * s.dz[p];
      }
    }
  }
  bool finite = std::isfinite(s.energy);
  for (int p = 0; p < np && finite; p++)
    finite = std::isfinite(s.gx[p]) && std::isfinite(s.gy[p]) && std::isfinite(s.gz[p]);
  s.finite = finite ? 1 : 0;
  if (profile) s.prof[8] += since(tp);
}

/* ensemble of networks of element el at the descriptor s.G: s.energy (mean, with e0),
   s.ym (members), s.estd (spread), s.dG = dE/dG (of the mean) */

void PairNNMD::network(Scratch &s, const Element &el) const
{
  double *xin = s.xin.data(), *dG = s.dG.data();
  const double *G = s.G.data();
  for (int k = 0; k < nfeat; k++) xin[k] = (G[k] - el.mean[k]) / el.std[k];
  std::fill(s.dG.begin(), s.dG.end(), 0.0);
  const int nl = (int) el.layers.size();
  const double inv_m = 1.0 / nmodels;
  double esum = 0.0;
  for (int m = 0; m < nmodels; m++) {
    const double *a = xin;
    size_t off = 0;
    for (int l = 0; l < nl - 1; l++) {
      const Layer &L = el.layers[l];
      const double *w = &L.w[(size_t) m * L.nin * L.nout];
      double *z = &s.zbuf[off], *an = &s.abuf[off], *df = &s.dfbuf[off];
      for (int k = 0; k < L.nout; k++) z[k] = L.b[(size_t) m * L.nout + k];
      for (int q = 0; q < L.nin; q++) {
        const double aq = a[q];
        const double *wr = w + (size_t) q * L.nout;
        for (int k = 0; k < L.nout; k++) z[k] += aq * wr[k];
      }
      for (int k = 0; k < L.nout; k++) act_fdf(z[k], an[k], df[k]);
      a = an;
      off += L.nout;
    }
    const Layer &O = el.layers[nl - 1];
    const double *wo = &O.w[(size_t) m * O.nin];
    double y = O.b[m];
    for (int q = 0; q < O.nin; q++) y += a[q] * wo[q];
    s.ym[m] = y + el.e0;
    esum += s.ym[m];
    // backward: delta of the last hidden layer = w_out / M
    double *dl = s.delta.data(), *dl2 = s.delta2.data();
    for (int q = 0; q < O.nin; q++) dl[q] = wo[q] * inv_m;
    for (int l = nl - 2; l >= 0; l--) {
      const Layer &L = el.layers[l];
      off -= L.nout;
      const double *df = &s.dfbuf[off];
      const double *w = &L.w[(size_t) m * L.nin * L.nout];
      for (int k = 0; k < L.nout; k++) dl[k] *= df[k];
      for (int q = 0; q < L.nin; q++) {
        const double *wr = w + (size_t) q * L.nout;
        double p0 = 0.0, p1 = 0.0, p2 = 0.0, p3 = 0.0;    // four partial sums: vectorises
        int k = 0;
        for (; k + 4 <= L.nout; k += 4) {
          p0 += wr[k] * dl[k];
          p1 += wr[k + 1] * dl[k + 1];
          p2 += wr[k + 2] * dl[k + 2];
          p3 += wr[k + 3] * dl[k + 3];
        }
        for (; k < L.nout; k++) p0 += wr[k] * dl[k];
        dl2[q] = (p0 + p1) + (p2 + p3);
      }
      std::swap(dl, dl2);
    }
    for (int k = 0; k < nfeat; k++) dG[k] += dl[k];
  }
  for (int k = 0; k < nfeat; k++) dG[k] /= el.std[k];
  s.energy = esum * inv_m;
  double var = 0.0;
  for (int m = 0; m < nmodels; m++) var += (s.ym[m] - s.energy) * (s.ym[m] - s.energy);
  s.estd = std::sqrt(var * inv_m);
}

/* ---------------------------------------------------------------------- */

/* one centre's results, from a Scratch (serial) or a chunk record (threads) */
struct PairNNMD::Out {
  int i, np, finite;
  const int *j;
  const double *dx, *dy, *dz, *gx, *gy, *gz, *ym;
  double energy, estd;
};

/* energy, ensemble members, spread, forces and virial of one centre into LAMMPS' arrays */

void PairNNMD::emit(const Out &o, double **f)
{
  const int i = o.i;
  if (eflag_global) eng_vdwl += o.energy;
  if (eflag_atom) eatom[i] += o.energy;
  for (int m = 0; m < nmodels; m++) pvector[m] += o.ym[m];
  if (!o.finite) pvector[nmodels] += 1.0;
  estd[i] = o.estd;
  double fx = 0.0, fy = 0.0, fz = 0.0;
  for (int p = 0; p < o.np; p++) {
    const int j = o.j[p];
    const double gx = o.gx[p], gy = o.gy[p], gz = o.gz[p];
    fx += gx;
    fy += gy;
    fz += gz;
    f[j][0] -= gx;
    f[j][1] -= gy;
    f[j][2] -= gz;
  }
  f[i][0] += fx;
  f[i][1] += fy;
  f[i][2] += fz;
  if (vflag_either) {
    for (int p = 0; p < o.np; p++) {
      const int j = o.j[p];
      const double gx = o.gx[p], gy = o.gy[p], gz = o.gz[p];
      const double dx = o.dx[p], dy = o.dy[p], dz = o.dz[p];
      // symmetrised per pair; the sum over pairs is symmetric anyway (rotation invariance)
      double v[6] = {-dx * gx, -dy * gy, -dz * gz, -0.5 * (dx * gy + dy * gx), -0.5 * (dx * gz + dz * gx),
                     -0.5 * (dy * gz + dz * gy)};
      if (vflag_global)
        for (int q = 0; q < 6; q++) virial[q] += v[q];
      if (vflag_atom)
        for (int q = 0; q < 6; q++) {
          vatom[i][q] += 0.5 * v[q];
          vatom[j][q] += 0.5 * v[q];
        }
    }
  }
}

/* ---------------------------------------------------------------------- */

void PairNNMD::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);

  if (atom->nmax > nmax) {
    nmax = atom->nmax;
    memory->destroy(estd);
    memory->create(estd, nmax, "pair:nnmd:estd");
  }
  for (int m = 0; m < nextra; m++) pvector[m] = 0.0;
  ncalls++;
  pvector[nmodels + 1] = (double) ncalls / comm->nprocs;

  const double *const *x = atom->x;
  double **f = atom->f;
  const int *type = atom->type;
  const int inum = list->inum;
  const int *ilist = list->ilist;
  const int *numneigh = list->numneigh;
  int **firstneigh = list->firstneigh;

  int nth = nthreads_req > 0 ? nthreads_req : std::max(1, comm->nthreads);
  if (inum < 2 * CHUNK) nth = 1;
  if ((int) scratch.size() < std::max(nth, 1)) {
    size_t hmax = 0, hsum = 0;
    for (auto &el : elements)
      for (auto &L : el.layers) {
        hmax = std::max(hmax, (size_t) std::max(L.nin, L.nout));
        hsum += L.nout;
      }
    const size_t nk = std::max(nr, na) + 1;
    while ((int) scratch.size() < nth) {
      auto s = std::make_unique<Scratch>();
      s->tstart.resize(ne + 1);
      s->astart.resize(ne + 1);
      s->coff.resize((size_t) ne * ne);
      s->cur.resize((size_t) ne * ne);
      s->accbuf.resize(nk * 32 + 8);
      s->acc = s->accbuf.data();
      while (reinterpret_cast<uintptr_t>(s->acc) % 64) s->acc++;
      s->Gt.resize(nk);
      s->H.resize(nk);
      s->Hd.resize(nk);
      s->G.resize(nfeat);
      s->dG.resize(nfeat);
      s->xin.resize(nfeat);
      for (auto *v : {&s->zbuf, &s->abuf, &s->dfbuf}) v->resize(hsum);
      s->delta.resize(std::max(hmax, (size_t) nfeat));
      s->delta2.resize(std::max(hmax, (size_t) nfeat));
      s->ym.resize(nmodels);
      scratch.push_back(std::move(s));
    }
  }
  auto refuse = [&](int i, int j, double d) {
    error->one(FLERR, "pair_style nnmd: atoms {} and {} are {:.4f} A apart (< {} A)", atom->tag[i], atom->tag[j],
               d, MIN_DISTANCE);
  };

  if (nth == 1) {
    Scratch &s = *scratch[0];
    for (int ii = 0; ii < inum; ii++) {
      const int i = ilist[ii];
      if (map[type[i]] < 0) continue;
      centre(s, i, x, type, firstneigh[i], numneigh[i]);
      if (s.bad_j >= 0) refuse(i, s.bad_j, s.bad_d);
      Clock::time_point tp;
      if (profile) tp = Clock::now();
      Out o{i, s.np, s.finite, s.j.data(), s.dx.data(), s.dy.data(), s.dz.data(), s.gx.data(), s.gy.data(),
            s.gz.data(), s.ym.data(), s.energy, s.estd};
      emit(o, f);
      if (profile) prof[9] += since(tp);
    }
    return;
  }

  // threads: chunks of centres handed out in turn; each chunk's results are kept as a
  // record and emitted afterwards in centre order, so the sums do not depend on threads
  const int nchunks = (inum + CHUNK - 1) / CHUNK;
  if ((int) chunk_i.size() < nchunks) {
    chunk_i.resize(nchunks);
    chunk_d.resize(nchunks);
  }
  std::atomic<int> next(0);
  const int M = nmodels;
  auto work = [&](int tid) {
    Scratch &s = *scratch[tid];
    for (;;) {
      const int c = next.fetch_add(1);
      if (c >= nchunks) break;
      std::vector<int> &ri = chunk_i[c];
      std::vector<double> &rd = chunk_d[c];
      ri.clear();
      rd.clear();
      for (int ii = c * CHUNK; ii < std::min(inum, (c + 1) * CHUNK); ii++) {
        const int i = ilist[ii];
        if (map[type[i]] < 0) continue;
        centre(s, i, x, type, firstneigh[i], numneigh[i]);
        if (s.bad_j >= 0) {
          ri.insert(ri.end(), {i, -1, s.bad_j});
          rd.push_back(s.bad_d);
          break;
        }
        const int np = s.np;
        ri.push_back(i);
        ri.push_back(np);
        ri.push_back(s.finite);
        ri.insert(ri.end(), s.j.begin(), s.j.begin() + np);
        rd.push_back(s.energy);
        rd.push_back(s.estd);
        rd.insert(rd.end(), s.ym.begin(), s.ym.begin() + M);
        for (auto *v : {&s.dx, &s.dy, &s.dz, &s.gx, &s.gy, &s.gz}) rd.insert(rd.end(), v->begin(), v->begin() + np);
      }
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < nth; t++) pool.emplace_back(work, t);
  work(0);
  for (auto &t : pool) t.join();
  Clock::time_point tp;
  if (profile) tp = Clock::now();
  for (int c = 0; c < nchunks; c++) {
    const int *ri = chunk_i[c].data(), *rend = ri + chunk_i[c].size();
    const double *rd = chunk_d[c].data();
    while (ri < rend) {
      const int i = ri[0], np = ri[1];
      if (np < 0) refuse(i, ri[2], rd[0]);
      Out o;
      o.i = i;
      o.np = np;
      o.finite = ri[2];
      o.j = ri + 3;
      o.energy = rd[0];
      o.estd = rd[1];
      o.ym = rd + 2;
      const double *v = rd + 2 + M;
      o.dx = v;
      o.dy = v + np;
      o.dz = v + 2 * np;
      o.gx = v + 3 * np;
      o.gy = v + 4 * np;
      o.gz = v + 5 * np;
      emit(o, f);
      ri += 3 + np;
      rd += 2 + M + 6 * np;
    }
  }
  if (profile) prof[9] += since(tp);
}
