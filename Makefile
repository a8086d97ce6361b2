# ncsn: build, test, benchmark.
#   make            build build/ncsn and build/libncsn.a (CPU backend; CUDA too when nvcc is found)
#   make test       build and run the test suite (CPU); this is what CI runs
#   make test-gpu   CUDA ops and model vs the CPU backend (skips, exit 0, without a GPU)
#   make demo       the main job: toy + Fashion-MNIST training and sampling on the CPU
#   make fixtures   regenerate tests/fixtures with the PyTorch reference (needs python3-torch)
# Options: CUDA=0|1 (default: 1 when nvcc is found), CUDA_ARCH="80 90", DEBUG=1,
#   MPI=0|1 (default: 1 when mpicc is on PATH): share the rendezvous id through MPI_Bcast
#   under mpirun (include/ncsn/comm.h); flags from `mpicc --showme:compile` / `--showme:link`
#   (Open MPI; for MPICH pass MPI_CFLAGS=... MPI_LDLIBS=... from `mpicc -show`).

CC      ?= gcc
CUDA_HOME ?= /usr/local/cuda
NVCC    ?= $(CUDA_HOME)/bin/nvcc
PYTHON  ?= /usr/bin/python3
CUDA    ?= $(if $(wildcard $(NVCC)),1,0)
CUDA_ARCH ?= 80 90
MPICC   ?= mpicc
MPI     ?= $(if $(shell command -v $(MPICC) 2>/dev/null),1,0)
BUILD   ?= build

# Debian 12 packages the build and tests need; `make deps` installs the missing ones.
APT_PACKAGES := build-essential libdnnl-dev libpng-dev libjpeg-dev zlib1g-dev libyaml-dev \
                dataset-fashion-mnist python3-numpy
APT_PACKAGES_REFERENCE := python3-torch

comma   := ,
OPT     := $(if $(DEBUG),-O0 -g -fsanitize=address$(comma)undefined,-O3 -march=native -g)
WARN    := -Wall -Wextra -Werror -Wno-unused-parameter
CFLAGS  += -std=c11 -D_GNU_SOURCE $(OPT) $(WARN) -fopenmp -I. -Iinclude -MMD -MP
LDLIBS  += -ldnnl -lpng -ljpeg -lz -lyaml -lm -fopenmp $(if $(DEBUG),-fsanitize=address$(comma)undefined)

HOST_SRC   := $(filter-out host/cuda_%.c host/main.c,$(wildcard host/*.c))
MODEL_SRC  := $(wildcard models/*.c)
CUDA_HOST_SRC := $(wildcard host/cuda_*.c)
CUDA_SRC   := $(wildcard kernels/*.cu)

ifeq ($(CUDA),1)
CFLAGS  += -DNCSN_WITH_CUDA -I$(CUDA_HOME)/include
NVFLAGS := -std=c++17 -O3 -I. -Iinclude -DNCSN_WITH_CUDA \
           $(foreach a,$(CUDA_ARCH),-gencode arch=compute_$(a),code=sm_$(a)) \
           -gencode arch=compute_$(lastword $(CUDA_ARCH)),code=compute_$(lastword $(CUDA_ARCH)) \
           -Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror,-Wno-unused-parameter
LDLIBS  += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudnn -lcublas -lcudart -lstdc++
# NCCL data parallel (host/cuda_comm.c); the CPU build uses the shared-memory all-reduce.
CFLAGS  += -DNCSN_WITH_NCCL
LDLIBS  += -lnccl
OBJ_CUDA := $(CUDA_HOST_SRC:%.c=$(BUILD)/%.o) $(CUDA_SRC:%.cu=$(BUILD)/%.cu.o)
endif
# The GPU tests build in every configuration: without CUDA they report "skipped", and with
# NCSN_TEST_GPU_CPU_PAIR=1 they run against a second CPU backend (make test-gpu).
GPU_TEST_BIN := $(patsubst tests/gpu/%.c,$(BUILD)/tests/gpu/%,$(wildcard tests/gpu/test_gpu_*.c))

ifeq ($(MPI),1)
MPI_CFLAGS := $(shell $(MPICC) --showme:compile)
MPI_LDLIBS := $(shell $(MPICC) --showme:link)
$(if $(MPI_LDLIBS),,$(error MPI=1, but `$(MPICC) --showme:link` printed nothing: install Open MPI, or pass MPI_CFLAGS and MPI_LDLIBS, or MPI=0))
CFLAGS  += -DNCSN_WITH_MPI $(MPI_CFLAGS)
LDLIBS  += $(MPI_LDLIBS)
endif

OBJ := $(HOST_SRC:%.c=$(BUILD)/%.o) $(MODEL_SRC:%.c=$(BUILD)/%.o) $(OBJ_CUDA)
LIB := $(BUILD)/libncsn.a
BIN := $(BUILD)/ncsn

TEST_SRC  := $(wildcard tests/test_*.c)
TEST_BIN  := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
BENCH_SRC := $(wildcard bench/bench_*.c)
BENCH_BIN := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)

.PHONY: all deps test test-gpu bench demo fixtures clean
all: $(BUILD)/.deps $(BIN) $(TEST_BIN) $(BENCH_BIN) $(GPU_TEST_BIN)

# ---- system packages -------------------------------------------------------------------
$(BUILD)/.deps: tools/deps.sh
	@mkdir -p $(BUILD)
	@sh tools/deps.sh $(APT_PACKAGES)
	@touch $@
deps:
	@sh tools/deps.sh $(APT_PACKAGES)

# ---- library and binary ----------------------------------------------------------------
$(BUILD)/%.o: %.c | $(BUILD)/.deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@
$(BUILD)/%.cu.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c $< -o $@
$(LIB): $(OBJ)
	@rm -f $@
	ar rcs $@ $^
$(BIN): $(BUILD)/host/main.o $(LIB)
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)
	@echo "built $@ (CUDA backend: $(if $(filter 1,$(CUDA)),yes: sm_$(CUDA_ARCH),no))"
$(BUILD)/tests/%: tests/%.c tests/harness.h tests/train_support.h $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< $(LIB) -o $@ $(LDLIBS)
$(BUILD)/tests/gpu/%: tests/gpu/%.c tests/harness.h $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< $(LIB) -o $@ $(LDLIBS)
$(BUILD)/bench/%: bench/%.c bench/bench_util.h $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< $(LIB) -o $@ $(LDLIBS)

# ---- tests -----------------------------------------------------------------------------
# Each test binary prints its checks and exits non-zero on any failure; the runner prints
# the closing "N passed, N failed" line over the binaries.
test: all
	@sh tests/run.sh $(BUILD) $(TEST_BIN)

test-gpu: all
	@sh tests/run_gpu.sh $(BUILD) $(CUDA) $(GPU_TEST_BIN)

bench: all
	@echo "see README: bench/ targets"

fixtures:
	$(PYTHON) tools/make_fixtures.py tests/fixtures
	$(PYTHON) tools/check_ssm.py tests/fixtures

demo: all
	@sh tools/demo.sh $(BUILD)

clean:
	rm -rf $(BUILD)

-include $(OBJ:.o=.d) $(BUILD)/host/main.d
