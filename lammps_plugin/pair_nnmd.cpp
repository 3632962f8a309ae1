/* pair_style nnmd: see pair_nnmd.h and docs/md.md ("pair_style nnmd in your own
   LAMMPS scripts"). The algebra follows nnmd_kernels/descriptor_ref.py,
   network.py, baseline.py and potential.py (Potential.compute_pairs) term by term:

     E_i = e0[e_i] + (1/M) sum_m NN_{e_i,m}((G_i - mu) / sigma) + 1/2 sum_j phi(r_ij)

   Full neighbour list, newton pair on: the pair gradients g_ij = dE_i/dr_ij of a
   local centre i go to F_i += g_ij and F_j -= g_ij (j may be a ghost; LAMMPS
   reverse-communicates ghost forces), the virial is -sum r_ij (x) g_ij and each
   pair term's virial is split half to i, half to j for the per-atom virial. */

#include "pair_nnmd.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"

#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

using namespace LAMMPS_NS;

namespace {
const char *ACT_NAMES[] = {"twisted_tanh", "aenet_twist", "tanh", "sigmoid", "linear", "elu", "gelu"};
const int N_ACT = 7;
const double SIN_THETA_MIN = 1e-3;    // descriptor.py: collinear triplets add no force
const double MIN_DISTANCE = 0.1;      // neighbors.py: atoms closer than this are refused
const double INV_SQRT2 = 0.7071067811865476;
const double INV_SQRT_2PI = 0.3989422804014327;

// arccos for x in [-1, 1] (fdlibm's rational minimax asin, as descriptor_numba.acos_fast:
// within 2 ulp of libm, branch-light so that loops over neighbours vectorise)
inline double acos_fast(double x)
{
  const double PS0 = 1.66666666666666657415e-01, PS1 = -3.25565818622400915405e-01,
               PS2 = 2.01212532134862925881e-01, PS3 = -4.00555345006794114027e-02,
               PS4 = 7.91534994289814532176e-04, PS5 = 3.47933107596021167570e-05;
  const double QS1 = -2.40339491173441421878e00, QS2 = 2.02094576023350569471e00,
               QS3 = -6.88283971605453293030e-01, QS4 = 7.70381505559019352791e-02;
  double ax = std::fabs(x);
  bool small = ax <= 0.5;
  double z = small ? x * x : 0.5 * (1.0 - ax);
  double p = z * (PS0 + z * (PS1 + z * (PS2 + z * (PS3 + z * (PS4 + z * PS5)))));
  double q = 1.0 + z * (QS1 + z * (QS2 + z * (QS3 + z * QS4)));
  double r = p / q;
  if (small) return 0.5 * M_PI - (x + x * r);
  double s = std::sqrt(z);
  double a = 2.0 * (s + s * r);
  return x > 0.0 ? a : M_PI - a;
}

// out[k] = sum_b w[b] T_k(x[b]), k < n: the recurrence runs over b in the inner loop
inline void cheb_sums(const double *x, const double *w, int nb, int n, double *t0, double *t1, double *out)
{
  double s0 = 0.0, s1 = 0.0;
  for (int b = 0; b < nb; b++) {
    t0[b] = 1.0;
    t1[b] = x[b];
    s0 += w[b];
    s1 += w[b] * x[b];
  }
  out[0] += s0;
  if (n > 1) out[1] += s1;
  for (int k = 2; k < n; k++) {
    double acc = 0.0;
    for (int b = 0; b < nb; b++) {
      double tk = 2.0 * x[b] * t1[b] - t0[b];
      t0[b] = t1[b];
      t1[b] = tk;
      acc += w[b] * tk;
    }
    out[k] += acc;
  }
}

// hT[b] = sum_k h[k] T_k(x[b]), hdT[b] = sum_k h[k] T_k'(x[b])
inline void cheb_eval(const double *x, const double *h, int nb, int n, double *t0, double *t1, double *d0,
                      double *d1, double *hT, double *hdT)
{
  for (int b = 0; b < nb; b++) {
    t0[b] = 1.0;
    t1[b] = x[b];
    d0[b] = 0.0;
    d1[b] = 1.0;
    hT[b] = h[0] + (n > 1 ? h[1] * x[b] : 0.0);
    hdT[b] = n > 1 ? h[1] : 0.0;
  }
  for (int k = 2; k < n; k++) {
    const double hk = h[k];
    for (int b = 0; b < nb; b++) {
      double tk = 2.0 * x[b] * t1[b] - t0[b];
      double dk = 2.0 * t1[b] + 2.0 * x[b] * d1[b] - d0[b];
      t0[b] = t1[b];
      t1[b] = tk;
      d0[b] = d1[b];
      d1[b] = dk;
      hT[b] += hk * tk;
      hdT[b] += hk * dk;
    }
  }
}
}    // namespace

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
  estd = nullptr;
  nmax = 0;
  ncalls = 0;
}

PairNNMD::~PairNNMD()
{
  if (copymode) return;
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

void PairNNMD::settings(int narg, char ** /*arg*/)
{
  if (narg != 0) error->all(FLERR, "pair_style nnmd takes no arguments (the model is named in pair_coeff)");
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

  // compute pair nnmd (summed over ranks): the ensemble members' network energies (M),
  // the number of centre atoms whose energy or gradients were not finite (for a `fix halt`
  // guard), and the number of force evaluations (each rank adds ncalls / nprocs)
  delete[] pvector;
  nextra = nmodels + 2;
  pvector = new double[nextra];
  for (int m = 0; m < nextra; m++) pvector[m] = 0.0;

  size_t hmax = 0, hsum = 0;
  for (auto &el : elements)
    for (auto &L : el.layers) {
      hmax = std::max(hmax, (size_t) std::max(L.nin, L.nout));
      hsum += L.nout;
    }
  G.resize(nfeat);
  dG.resize(nfeat);
  xin.resize(nfeat);
  zbuf.resize(hsum);
  abuf.resize(hsum);
  delta.resize(hmax);
  delta2.resize(hmax);
  S.resize(std::max(nr, na) + 1);
  chan_used.assign((size_t) std::max(ca, 1) * ne, 0);
  for (int c = 0; c < ca; c++)
    for (int a = 0; a < ne; a++)
      for (int b = 0; b < ne; b++)
        if (wang[(c * ne + a) * ne + b] != 0.0) chan_used[c * ne + a] = 1;
  r_idx.clear();    // grow_scratch sizes the per-neighbour buffers on first use
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
  return bytes;
}

/* ---------------------------------------------------------------------- */

inline double PairNNMD::act_f(double x) const
{
  switch (act) {
    case 0: return std::tanh(x) + 0.16 * x;
    case 1: return 1.7159 * std::tanh(2.0 / 3.0 * x) + 0.1 * x;
    case 2: return std::tanh(x);
    case 3: return 0.5 * (1.0 + std::tanh(0.5 * x));
    case 4: return x;
    case 5: return x > 0 ? x : std::expm1(x);
    default: return x * (0.5 * std::erfc(-INV_SQRT2 * x));
  }
}

inline double PairNNMD::act_df(double x) const
{
  switch (act) {
    case 0: {
      double t = std::tanh(x);
      return 1.0 - t * t + 0.16;
    }
    case 1: {
      double t = std::tanh(2.0 / 3.0 * x);
      return 1.7159 * (2.0 / 3.0) * (1.0 - t * t) + 0.1;
    }
    case 2: {
      double t = std::tanh(x);
      return 1.0 - t * t;
    }
    case 3: {
      double s = 0.5 * (1.0 + std::tanh(0.5 * x));
      return s * (1.0 - s);
    }
    case 4: return 1.0;
    case 5: return x > 0 ? 1.0 : std::exp(x);
    default: return 0.5 * std::erfc(-INV_SQRT2 * x) + x * (INV_SQRT_2PI * std::exp(-0.5 * x * x));
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

inline void PairNNMD::angle_variable(double cs, double &x, double &dx) const
{
  double c = std::min(1.0, std::max(-1.0, cs));
  if (!angle_theta) {
    x = c;
    dx = 1.0;
    return;
  }
  double s = std::max(std::sqrt(std::max(1.0 - c * c, 0.0)), SIN_THETA_MIN);
  x = 2.0 * acos_fast(c) / M_PI - 1.0;
  dx = -2.0 / (M_PI * s);
}

void PairNNMD::grow_scratch(int np)
{
  if ((int) r_idx.size() >= np && !r_idx.empty()) return;
  size_t n = std::max(np, 16);
  for (auto *v : {&r_x, &r_fc, &r_dfc, &a_d, &a_fc, &a_dfc, &w2, &t0, &t1, &d0, &d1, &hT, &hdT, &HT, &HdT})
    v->resize(n);
  a_u.resize(3 * n);
  gl.resize(3 * n);
  r_idx.resize(n);
  a_idx.resize(n);
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

  double **x = atom->x;
  double **f = atom->f;
  int *type = atom->type;
  int inum = list->inum;
  int *ilist = list->ilist;
  int *numneigh = list->numneigh;
  int **firstneigh = list->firstneigh;
  const double rcsq = rcmax * rcmax;
  const double inv_m = 1.0 / nmodels;
  std::vector<double> ym(nmodels);

  for (int ii = 0; ii < inum; ii++) {
    const int i = ilist[ii];
    const int ei = map[type[i]];
    if (ei < 0) continue;
    const Element &el = elements[ei];
    const double xi = x[i][0], yi = x[i][1], zi = x[i][2];

    // neighbours within the model cutoff (mapped types only)
    nj.clear();
    nt.clear();
    nd.clear();
    nx.clear();
    int *jlist = firstneigh[i];
    for (int jj = 0; jj < numneigh[i]; jj++) {
      int j = jlist[jj] & NEIGHMASK;
      int ej = map[type[j]];
      if (ej < 0) continue;
      double dx = x[j][0] - xi, dy = x[j][1] - yi, dz = x[j][2] - zi;
      double rsq = dx * dx + dy * dy + dz * dz;
      if (rsq >= rcsq) continue;
      double d = std::sqrt(rsq);
      if (d < MIN_DISTANCE)
        error->one(FLERR, "pair_style nnmd: atoms {} and {} are {:.4f} A apart (< {} A)", atom->tag[i],
                   atom->tag[j], d, MIN_DISTANCE);
      nj.push_back(j);
      nt.push_back(ej);
      nd.push_back(d);
      nx.push_back(dx);
      nx.push_back(dy);
      nx.push_back(dz);
    }
    const int np = (int) nj.size();
    ng.assign((size_t) 3 * np, 0.0);
    std::fill(G.begin(), G.end(), 0.0);
    grow_scratch(np);

    // radial subset (d < R_r): Chebyshev argument, cutoff, weights
    int mr = 0;
    for (int p = 0; p < np; p++) {
      if (nd[p] >= rr) continue;
      r_idx[mr] = p;
      cutoff(nd[p], rr, r_fc[mr], r_dfc[mr]);
      r_x[mr] = std::min(1.0, std::max(-1.0, 2.0 * nd[p] / rr - 1.0));
      mr++;
    }
    for (int c = 0; c < cr; c++) {
      bool any = false;
      for (int q = 0; q < mr; q++) {
        w2[q] = wrad[c * ne + nt[r_idx[q]]] * r_fc[q];
        any = any || (w2[q] != 0.0);
      }
      if (!any) continue;
      cheb_sums(r_x.data(), w2.data(), mr, nr, t0.data(), t1.data(), &G[c * nr]);
    }

    // angular subset (d < R_a): unit vectors, cutoff; triplets (a, b > a) as rows
    int ma = 0;
    if (na > 0) {
      for (int p = 0; p < np; p++) {
        if (nd[p] >= ra) continue;
        a_idx[ma] = p;
        a_d[ma] = nd[p];
        a_u[3 * ma] = nx[3 * p] / nd[p];
        a_u[3 * ma + 1] = nx[3 * p + 1] / nd[p];
        a_u[3 * ma + 2] = nx[3 * p + 2] / nd[p];
        cutoff(nd[p], ra, a_fc[ma], a_dfc[ma]);
        ma++;
      }
      size_t ntri = (size_t) ma * (ma - 1) / 2;
      if (tri_x.size() < ntri) {
        tri_x.resize(ntri);
        tri_dx.resize(ntri);
        tri_c.resize(ntri);
        tri_w.resize(ntri);
      }
      size_t off = 0;
      const int aoff = cr * nr;
      for (int a = 0; a + 1 < ma; a++) {
        const int b0 = a + 1, nb = ma - b0;
        const int ta = nt[a_idx[a]];
        double *xs = &tri_x[off], *dxs = &tri_dx[off], *cs = &tri_c[off], *ws = &tri_w[off];
        const double ux = a_u[3 * a], uy = a_u[3 * a + 1], uz = a_u[3 * a + 2], fa = a_fc[a];
        for (int q = 0; q < nb; q++) {
          const int b = b0 + q;
          double c = ux * a_u[3 * b] + uy * a_u[3 * b + 1] + uz * a_u[3 * b + 2];
          cs[q] = c;
          angle_variable(c, xs[q], dxs[q]);
          ws[q] = fa * a_fc[b];
        }
        for (int ch = 0; ch < ca; ch++) {
          if (!chan_used[ch * ne + ta]) continue;
          const double *wrow = &wang[(ch * ne + ta) * ne];
          for (int q = 0; q < nb; q++) w2[q] = wrow[nt[a_idx[b0 + q]]] * ws[q];
          cheb_sums(xs, w2.data(), nb, na, t0.data(), t1.data(), &G[aoff + ch * na]);
        }
        off += nb;
      }
    }

    // networks: ensemble mean energy and dE/dG (standardised inputs)
    for (int k = 0; k < nfeat; k++) xin[k] = (G[k] - el.mean[k]) / el.std[k];
    std::fill(dG.begin(), dG.end(), 0.0);
    const int nl = (int) el.layers.size();
    double esum = 0.0;
    for (int m = 0; m < nmodels; m++) {
      const double *a = xin.data();
      size_t off = 0;
      for (int l = 0; l < nl - 1; l++) {
        const Layer &L = el.layers[l];
        const double *w = &L.w[(size_t) m * L.nin * L.nout];
        double *z = &zbuf[off];
        double *an = &abuf[off];
        for (int k = 0; k < L.nout; k++) z[k] = L.b[(size_t) m * L.nout + k];
        for (int q = 0; q < L.nin; q++) {
          double aq = a[q];
          const double *wr = w + (size_t) q * L.nout;
          for (int k = 0; k < L.nout; k++) z[k] += aq * wr[k];
        }
        for (int k = 0; k < L.nout; k++) an[k] = act_f(z[k]);
        a = an;
        off += L.nout;
      }
      const Layer &O = el.layers[nl - 1];
      const double *wo = &O.w[(size_t) m * O.nin];
      double y = O.b[m];
      for (int q = 0; q < O.nin; q++) y += a[q] * wo[q];
      ym[m] = y + el.e0;
      esum += ym[m];
      // backward: delta of the last hidden layer = w_out / M
      double *dl = delta.data(), *dl2 = delta2.data();
      for (int q = 0; q < O.nin; q++) dl[q] = wo[q] * inv_m;
      for (int l = nl - 2; l >= 0; l--) {
        off -= el.layers[l].nout;
        const Layer &L = el.layers[l];
        const double *z = &zbuf[off];
        const double *w = &L.w[(size_t) m * L.nin * L.nout];
        for (int k = 0; k < L.nout; k++) dl[k] *= act_df(z[k]);
        for (int q = 0; q < L.nin; q++) {
          const double *wr = w + (size_t) q * L.nout;
          double s = 0.0;
          for (int k = 0; k < L.nout; k++) s += wr[k] * dl[k];
          dl2[q] = s;
        }
        std::swap(dl, dl2);
      }
      for (int k = 0; k < nfeat; k++) dG[k] += dl[k];
    }
    for (int k = 0; k < nfeat; k++) dG[k] /= el.std[k];
    double ei_energy = esum * inv_m;
    {
      double var = 0.0;
      for (int m = 0; m < nmodels; m++) {
        var += (ym[m] - ei_energy) * (ym[m] - ei_energy);
        pvector[m] += ym[m];
      }
      estd[i] = std::sqrt(var * inv_m);
    }

    // VJP: radial, h_n = dE/dG_cn summed through the Chebyshev recurrence per pair
    if (mr > 0) {
      std::fill(HT.begin(), HT.begin() + mr, 0.0);
      std::fill(HdT.begin(), HdT.begin() + mr, 0.0);
      for (int c = 0; c < cr; c++) {
        bool any = false;
        for (int q = 0; q < mr; q++) any = any || (wrad[c * ne + nt[r_idx[q]]] != 0.0);
        if (!any) continue;
        cheb_eval(r_x.data(), &dG[c * nr], mr, nr, t0.data(), t1.data(), d0.data(), d1.data(), hT.data(),
                  hdT.data());
        for (int q = 0; q < mr; q++) {
          double w = wrad[c * ne + nt[r_idx[q]]];
          HT[q] += w * hT[q];
          HdT[q] += w * hdT[q];
        }
      }
      for (int q = 0; q < mr; q++) {
        const int p = r_idx[q];
        double e_r = HdT[q] * (2.0 / rr) * r_fc[q] + HT[q] * r_dfc[q];
        double sd = e_r / nd[p];
        ng[3 * p] += sd * nx[3 * p];
        ng[3 * p + 1] += sd * nx[3 * p + 1];
        ng[3 * p + 2] += sd * nx[3 * p + 2];
      }
    }
    // VJP: angular
    if (na > 0 && ma > 1) {
      std::fill(gl.begin(), gl.begin() + 3 * ma, 0.0);
      size_t off = 0;
      const int aoff = cr * nr;
      for (int a = 0; a + 1 < ma; a++) {
        const int b0 = a + 1, nb = ma - b0;
        const int ta = nt[a_idx[a]];
        const double *xs = &tri_x[off], *dxs = &tri_dx[off], *cs = &tri_c[off], *ws = &tri_w[off];
        std::fill(HT.begin(), HT.begin() + nb, 0.0);
        std::fill(HdT.begin(), HdT.begin() + nb, 0.0);
        for (int ch = 0; ch < ca; ch++) {
          if (!chan_used[ch * ne + ta]) continue;
          const double *wrow = &wang[(ch * ne + ta) * ne];
          cheb_eval(xs, &dG[aoff + ch * na], nb, na, t0.data(), t1.data(), d0.data(), d1.data(), hT.data(),
                    hdT.data());
          for (int q = 0; q < nb; q++) {
            double w = wrow[nt[a_idx[b0 + q]]];
            HT[q] += w * hT[q];
            HdT[q] += w * hdT[q];
          }
        }
        // d cos / d r_a = (u_b - cos u_a) / |r_a|
        const double *ua = &a_u[3 * a];
        const double inv_a = 1.0 / a_d[a];
        double ga0 = 0.0, ga1 = 0.0, ga2 = 0.0;
        for (int q = 0; q < nb; q++) {
          const int b = b0 + q;
          const double *ub = &a_u[3 * b];
          const double c = cs[q];
          const double e_cos = HdT[q] * dxs[q] * ws[q];
          const double e_ra = HT[q] * a_dfc[a] * a_fc[b];
          const double e_rb = HT[q] * a_fc[a] * a_dfc[b];
          const double inv_b = 1.0 / a_d[b];
          ga0 += e_cos * (ub[0] - c * ua[0]) * inv_a + e_ra * ua[0];
          ga1 += e_cos * (ub[1] - c * ua[1]) * inv_a + e_ra * ua[1];
          ga2 += e_cos * (ub[2] - c * ua[2]) * inv_a + e_ra * ua[2];
          gl[3 * b] += e_cos * (ua[0] - c * ub[0]) * inv_b + e_rb * ub[0];
          gl[3 * b + 1] += e_cos * (ua[1] - c * ub[1]) * inv_b + e_rb * ub[1];
          gl[3 * b + 2] += e_cos * (ua[2] - c * ub[2]) * inv_b + e_rb * ub[2];
        }
        gl[3 * a] += ga0;
        gl[3 * a + 1] += ga1;
        gl[3 * a + 2] += ga2;
        off += nb;
      }
      for (int a = 0; a < ma; a++) {
        const int p = a_idx[a];
        ng[3 * p] += gl[3 * a];
        ng[3 * p + 1] += gl[3 * a + 1];
        ng[3 * p + 2] += gl[3 * a + 2];
      }
    }

    // Delta baseline: half of each directed pair to its centre
    if (has_baseline) {
      const double P[4] = {12.0, 10.0, 8.0, 6.0};
      double Rp[4], Rp1[4];
      for (int q = 0; q < 4; q++) {
        Rp[q] = std::pow(rb, -P[q]);
        Rp1[q] = P[q] * std::pow(rb, -(P[q] + 1.0));
      }
      for (int p = 0; p < np; p++) {
        double r = nd[p];
        if (r >= rb) continue;
        const double *A = &bcoef[((size_t) ei * ne + nt[p]) * 4];
        double i2 = 1.0 / (r * r);
        double i6 = i2 * i2 * i2, i8 = i6 * i2, i10 = i8 * i2;
        double rp[4] = {i10 * i2, i10, i8, i6};
        double phi = 0.0, dphi = 0.0;
        for (int q = 0; q < 4; q++) {
          phi += A[q] * (rp[q] - Rp[q] + Rp1[q] * (r - rb));
          dphi += A[q] * (-P[q] * rp[q] / r + Rp1[q]);
        }
        ei_energy += 0.5 * phi;
        double s = 0.5 * dphi / r;
        ng[3 * p] += s * nx[3 * p];
        ng[3 * p + 1] += s * nx[3 * p + 1];
        ng[3 * p + 2] += s * nx[3 * p + 2];
      }
    }

    {
      bool finite = std::isfinite(ei_energy);
      for (int p = 0; p < 3 * np && finite; p++) finite = std::isfinite(ng[p]);
      if (!finite) pvector[nmodels] += 1.0;
    }
    if (eflag_global) eng_vdwl += ei_energy;
    if (eflag_atom) eatom[i] += ei_energy;

    // forces and virial from the pair gradients
    for (int p = 0; p < np; p++) {
      const int j = nj[p];
      const double gx = ng[3 * p], gy = ng[3 * p + 1], gz = ng[3 * p + 2];
      f[i][0] += gx;
      f[i][1] += gy;
      f[i][2] += gz;
      f[j][0] -= gx;
      f[j][1] -= gy;
      f[j][2] -= gz;
      if (vflag_either) {
        const double dx = nx[3 * p], dy = nx[3 * p + 1], dz = nx[3 * p + 2];
        // symmetrised per pair; the sum over pairs is symmetric anyway (rotation invariance)
        double v[6] = {-dx * gx, -dy * gy, -dz * gz, -0.5 * (dx * gy + dy * gx),
                       -0.5 * (dx * gz + dz * gx), -0.5 * (dy * gz + dz * gy)};
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
}
