/* pair_style nnmd: the nnmd Behler-Parrinello potential (Chebyshev descriptor,
   per-element MLP ensembles, feature standardisation, Delta-NNP pair baseline)
   as a LAMMPS pair style. Reads the text model written by
   `nnmd export MODEL --format lammps` (format "nnmd-lammps 1", see docs/md.md).

     pair_style nnmd [threads N|auto]
     pair_coeff * * MODEL El1 ... ElN

   threads N: centre atoms of each MPI rank are shared among N threads (default 1;
   auto: LAMMPS' own thread count, i.e. OMP_NUM_THREADS or `package omp N`). The
   results do not depend on N (bitwise: each centre is computed alone and the forces
   are summed in centre order). NNMD_PLUGIN_PROFILE=1 in the environment prints the
   time per phase of the force evaluation on each rank when the pair style is deleted;
   NNMD_PLUGIN_ISA=generic|avx2|avx512 caps the instruction set of the kernels (the
   default is the widest the CPU runs). */
#ifndef LMP_PAIR_NNMD_H
#define LMP_PAIR_NNMD_H

#include "pair.h"

#include <memory>
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

  struct Scratch;    // per-thread work buffers of one centre atom (pair_nnmd.cpp)
  struct Kernels {    // the Chebyshev kernels of one instruction set (nnmd_simd.inc)
    const char *name;
    void (*sums)(const double *x, const double *w, int n, int nk, double *acc, double *out);
    void (*series)(const double *x, int n, const double *h, const double *hd, int nk, double *S, double *dS);
    void (*angles)(const double *c, size_t n, double *x, double *dx);
  };

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
  std::vector<double> wang;    // (ca, ne, ne), symmetric in the two elements
  std::vector<Element> elements;
  int has_baseline;
  double rb;
  std::vector<double> bcoef;    // (ne, ne, 4)
  double brp[4], brp1[4];       // baseline shift terms R^-p and p R^-(p+1)
  std::string model_file;

  std::vector<int> map;    // LAMMPS type -> element index (-1: not mapped)

  int nthreads_req;    // pair_style nnmd threads N (0: auto)
  std::vector<std::unique_ptr<Scratch>> scratch;    // one per thread
  std::vector<std::vector<int>> chunk_i;            // threaded: per chunk of centres, results
  std::vector<std::vector<double>> chunk_d;
  double *estd;    // per-atom ensemble spread of the network energy (local atoms)
  int nmax;
  bigint ncalls;    // force evaluations so far
  const Kernels *K;    // chosen for this CPU
  int profile;         // NNMD_PLUGIN_PROFILE
  double prof[10];
  bigint prof_centres;

  void read_model(const std::string &text);
  void allocate();
  void centre(Scratch &s, int i, const double *const *x, const int *type, const int *jlist, int jnum) const;
  void network(Scratch &s, const Element &el) const;
  struct Out;    // one centre's results (pair_nnmd.cpp)
  void emit(const Out &o, double **f);
  void act_fdf(double x, double &f, double &df) const;
  void cutoff(double r, double rc, double &fc, double &dfc) const;
};

}    // namespace LAMMPS_NS

#endif
