/* pair_style nnmd: the nnmd Behler-Parrinello potential (Chebyshev descriptor,
   per-element MLP ensembles, feature standardisation, Delta-NNP pair baseline)
   as a LAMMPS pair style. Reads the text model written by
   `nnmd export MODEL --format lammps` (format "nnmd-lammps 1", see docs/md.md). */
#ifndef LMP_PAIR_NNMD_H
#define LMP_PAIR_NNMD_H

#include "pair.h"

#include <string>
#include <vector>

namespace LAMMPS_NS {

class PairNNMD : public Pair {
 public:
  PairNNMD(class LAMMPS *);
  ~PairNNMD() override;
  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;
  void *extract_peratom(const char *, int &) override;
  double memory_usage() override;

 protected:
  struct Layer {
    int nin, nout;
    std::vector<double> w;    // (M, nin, nout) row-major
    std::vector<double> b;    // (M, nout)
  };
  struct Element {
    std::string symbol;
    double e0;
    std::vector<double> mean, std;    // (F)
    std::vector<Layer> layers;        // hidden layers + linear output (nout 1)
  };

  // model
  int ne, nr, na, cr, ca, nfeat, nmodels, act;
  double rr, ra, rcmax;
  int cutoff_tanh, angle_theta;
  std::vector<double> wrad;    // (cr, ne)
  std::vector<double> wang;    // (ca, ne, ne)
  std::vector<Element> elements;
  int has_baseline;
  double rb;
  std::vector<double> bcoef;    // (ne, ne, 4)
  std::string model_file;

  std::vector<int> map;    // LAMMPS type -> element index (-1: not mapped)

  // scratch (per centre atom)
  std::vector<int> nj, nt;
  std::vector<double> nd, nx;    // distances, (P, 3) vectors
  std::vector<double> ng;        // (P, 3) dE/dr_ij
  std::vector<double> G, dG, xin, zbuf, abuf, delta, delta2, S;
  // per-neighbour scratch (structure of arrays): radial and angular subsets, triplet rows
  std::vector<int> r_idx, a_idx;
  std::vector<double> r_x, r_fc, r_dfc, a_d, a_u, a_fc, a_dfc, w2, t0, t1, d0, d1, hT, hdT, HT, HdT, gl;
  std::vector<double> tri_x, tri_dx, tri_c, tri_w;
  std::vector<char> chan_used;    // (ca, ne): angular channel c has a weight for centre-side element
  double *estd;    // per-atom ensemble spread of the network energy (local atoms)
  int nmax;
  bigint ncalls;    // force evaluations so far

  void read_model(const std::string &text);
  void allocate();
  double act_f(double) const;
  double act_df(double) const;
  void cutoff(double r, double rc, double &fc, double &dfc) const;
  void angle_variable(double cs, double &x, double &dx) const;
  void grow_scratch(int np);
};

}    // namespace LAMMPS_NS

#endif
