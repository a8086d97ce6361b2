/* config.h: the official NCSN / NCSNv2 YAML configuration, read with libyaml.
 *
 * What it is: one struct with the sections and keys of ermongroup/ncsn configs/anneal.yml
 * and ermongroup/ncsnv2 configs/<name>.yml, same names, same meaning, plus a few documented
 * engine extensions (model.arch, training.grad_clip, training.warmup, training.keep_last,
 * toy-data keys). What it is not: a general YAML loader; an unknown key or a value of the
 * wrong type is an error naming the key and the file.
 *
 * Defaults: a key absent from the file keeps the default given in config.c, which is the
 * official code's behaviour for that key when it is absent.
 */
#ifndef NCSN_CONFIG_H
#define NCSN_CONFIG_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    NCSN_ARCH_NCSN = 0,           /* v1 CondRefineNetDilated */
    NCSN_ARCH_NCSNV2 = 1,         /* NCSNv2 (4 cascades) */
    NCSN_ARCH_NCSNV2_DEEPER = 2,  /* NCSNv2Deeper (5 cascades) */
    NCSN_ARCH_NCSNV2_DEEPEST = 3, /* NCSNv2Deepest (6 cascades) */
    NCSN_ARCH_TOY = 4             /* MLP score network for 2-D data (engine extension) */
} ncsn_arch;

typedef struct {
    /* training */
    int batch_size;
    long n_epochs, n_iters;
    int ngpu;
    double noise_std;
    char algo[16];          /* "dsm" | "ssm" */
    long snapshot_freq;
    int snapshot_sampling;
    double anneal_power;
    int log_all_sigmas;
    int n_particles;
    double grad_clip;       /* engine: max global grad norm, 0 = off */
    long warmup;            /* engine: linear lr warm-up steps, 0 = off */
    int keep_last;          /* engine: checkpoints kept, 0 = all */
    long log_freq;          /* engine: steps between log lines (default 100) */
} ncsn_training_config;

typedef struct {
    int batch_size;
    int data_init;
    double step_lr;
    int n_steps_each;
    long ckpt_id;
    int final_only, fid, denoise;
    int num_samples4fid;
    int inpainting, interpolation;
    int n_interpolations;
} ncsn_sampling_config;

typedef struct {
    int batch_size, num_samples;
    long begin_ckpt, end_ckpt;
    double step_lr;
    int n_steps_each, verbose, ensemble;
} ncsn_fast_fid_config;

typedef struct {
    long begin_ckpt, end_ckpt;
    int batch_size;
} ncsn_test_config;

typedef struct {
    char dataset[32];  /* MNIST FashionMNIST CIFAR10 CELEBA LSUN FFHQ FOLDER NPY TOY */
    char category[64]; /* LSUN */
    int image_size, channels;
    int logit_transform, uniform_dequantization, gaussian_dequantization, random_flip, rescaled;
    int num_workers;
    /* engine extension for toy 2-D data: mixture "p*N(mu1, I) + (1-p)*N(mu2, I)" */
    double toy_weight, toy_mean1, toy_mean2;
    int toy_size;
} ncsn_data_config;

typedef struct {
    ncsn_arch arch;
    int arch_given;  /* model.arch present in the file */
    double sigma_begin, sigma_end;
    int num_classes; /* L */
    int ema;
    double ema_rate;
    int spec_norm;
    char sigma_dist[16];    /* "geometric" */
    char normalization[32]; /* "InstanceNorm++" */
    char nonlinearity[16];  /* "elu" */
    int ngf;
    int batch_norm;         /* v1 key, must be false */
    int hidden;             /* toy MLP width */
} ncsn_model_config;

typedef struct {
    double weight_decay;
    char optimizer[16]; /* "Adam" */
    double lr, beta1, eps;
    int amsgrad;
} ncsn_optim_config;

typedef struct {
    ncsn_training_config training;
    ncsn_sampling_config sampling;
    ncsn_fast_fid_config fast_fid;
    ncsn_test_config test;
    ncsn_data_config data;
    ncsn_model_config model;
    ncsn_optim_config optim;
    int is_v1;   /* v1 layout (anneal.yml: no sampling section, training.algo present) */
    char *text;  /* the YAML text as read (stored in checkpoints), owned */
    char path[512];
} ncsn_config;

/* Reads and validates a config file. On error prints one line
 * "ncsn: FILE: unknown key 'model.foo'" (or the type / value problem) and exits(1). */
void ncsn_config_load(ncsn_config *cfg, const char *path);
/* Same, from text already in memory (checkpoint metadata); `origin` names it in errors. */
void ncsn_config_parse(ncsn_config *cfg, const char *text, const char *origin);
void ncsn_config_free(ncsn_config *cfg);
const char *ncsn_arch_name(ncsn_arch arch);

/* The geometric noise schedule: sigma_i = exp(linspace(log begin, log end, L))[i],
 * computed in float64 then rounded to float32, as get_sigmas does. out has L floats. */
void ncsn_config_sigmas(const ncsn_config *cfg, float *out);

#ifdef __cplusplus
}
#endif

#endif /* NCSN_CONFIG_H */
