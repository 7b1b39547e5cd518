# sendgate build.
#
#   make            build/sendgate, build/sendgatectl, build/sendgate-bench
#   make test       install missing Debian packages, build, run every test
#                   (unit + integration, then the same under ASan+UBSan,
#                   then part of it under valgrind's memcheck)
#   make valgrind   the unit tests, then the daemon in part of the
#                   integration suite, under valgrind's memcheck
#   make asan       the ASan+UBSan build and its test run only
#   make run        local demo: throwaway PostgreSQL, DNS server and mail sink
#
# Each folder builds into its own static library; a unit test named
# tests/unit/test_<folder>*.c links only that folder's library and common's,
# so work in one folder never waits on another one compiling.

BUILD    ?= build
CC       ?= cc
PYTHON   ?= /usr/bin/python3
PKGS      = libevent_core libevent_extra libevent_openssl libevent_pthreads \
            libcares libpq openssl jansson inih libpsl
SAN      ?=

PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

OPT      ?= -O2 -g
CFLAGS   += $(OPT) -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow \
            -Wno-unused-parameter -fno-strict-aliasing -I. $(PKG_CFLAGS) $(SAN)
LDFLAGS  += $(SAN)
LDLIBS   += $(PKG_LIBS) -lpthread -lm

FOLDERS  = smtpd queue dkim dns tenants common
MAINS    = smtpd/main.c $(wildcard tenants/ctl*.c) $(wildcard bench/*.c)

lib_srcs = $(filter-out $(MAINS),$(wildcard $(1)/*.c))
lib_objs = $(patsubst %.c,$(BUILD)/%.o,$(call lib_srcs,$(1)))
# Folders with no library code yet are left out of the link.
LIB_FOLDERS = $(foreach f,$(FOLDERS),$(if $(or $(call lib_srcs,$(f)),$(filter tenants,$(f))),$(f)))
LIBS     = $(foreach f,$(LIB_FOLDERS),$(BUILD)/lib$(f).a)

MIGRATIONS = $(sort $(wildcard tenants/migrations/*.sql))

UNIT_SRCS = $(wildcard tests/unit/test_*.c)
UNIT_BINS = $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRCS))

.PHONY: all deps test unit integration valgrind asan asan-build bench-unsigned run clean fuzz FORCE
.SECONDARY:

all: $(BUILD)/sendgate $(BUILD)/sendgatectl $(BUILD)/sendgate-bench

deps:
	@sh tools/deps.sh

$(BUILD)/%.o: %.c $(wildcard */*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

define folder_lib
$(BUILD)/lib$(1).a: $(call lib_objs,$(1))
	@mkdir -p $$(dir $$@)
	rm -f $$@
	ar rcs $$@ $$^
endef
$(foreach f,$(filter-out tenants,$(FOLDERS)),$(eval $(call folder_lib,$(f))))

# The SQL migrations are compiled into libtenants so that sendgatectl needs no
# files beside it.
# Regenerated every time but replaced only when its text changes: a new
# migration file may carry an older timestamp than the generated source.
$(BUILD)/tenants/migrations_gen.c: $(MIGRATIONS) tools/embed-sql.sh FORCE
	@mkdir -p $(dir $@)
	@sh tools/embed-sql.sh $(MIGRATIONS) > $@.tmp
	@if cmp -s $@.tmp $@; then rm -f $@.tmp; else mv $@.tmp $@; fi

FORCE:

$(BUILD)/tenants/migrations_gen.o: $(BUILD)/tenants/migrations_gen.c
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/libtenants.a: $(call lib_objs,tenants) $(BUILD)/tenants/migrations_gen.o
	@mkdir -p $(dir $@)
	rm -f $@
	ar rcs $@ $^

# The folders' libraries call each other: link them as one group.
$(BUILD)/sendgate: $(BUILD)/smtpd/main.o $(LIBS)
	$(CC) $(LDFLAGS) -o $@ $< -Wl,--start-group $(LIBS) -Wl,--end-group $(LDLIBS)

# The admin tool never needs the SMTP server's code.
CTL_LIBS = $(filter-out $(BUILD)/libsmtpd.a,$(LIBS))
$(BUILD)/sendgatectl: $(patsubst %.c,$(BUILD)/%.o,$(wildcard tenants/ctl*.c)) $(CTL_LIBS)
	$(CC) $(LDFLAGS) -o $@ $(filter %.o,$^) -Wl,--start-group $(CTL_LIBS) -Wl,--end-group $(LDLIBS)

$(BUILD)/sendgate-bench: $(patsubst %.c,$(BUILD)/%.o,$(wildcard bench/*.c)) $(BUILD)/libdkim.a $(BUILD)/libcommon.a
	$(CC) $(LDFLAGS) -o $@ $(filter %.o,$^) $(BUILD)/libdkim.a $(BUILD)/libcommon.a $(LDLIBS)

# tests/unit/test_<folder>[_what].c links lib<folder>.a and libcommon.a.
unit_folder = $(firstword $(subst _, ,$(patsubst test_%,%,$(1))))
define unit_rule
$(BUILD)/tests/$(1): tests/unit/$(1).c $(BUILD)/lib$(call unit_folder,$(1)).a $(BUILD)/libcommon.a
	@mkdir -p $$(dir $$@)
	$$(CC) $$(CFLAGS) $$(LDFLAGS) -o $$@ $$< $(BUILD)/lib$(call unit_folder,$(1)).a $(BUILD)/libcommon.a $$(LDLIBS) -lcmocka
endef
$(foreach t,$(patsubst tests/unit/%.c,%,$(UNIT_SRCS)),$(eval $(call unit_rule,$(t))))

unit: $(UNIT_BINS)
	@fail=0; for t in $(UNIT_BINS); do \
		echo "== $$t"; $$t || fail=1; \
	done; exit $$fail

integration: all
	SENDGATE_BUILD=$(abspath $(BUILD)) $(PYTHON) -m pytest -q -p no:cacheprovider tests/integration bench/test_bench.py $(PYTEST_ARGS)

# The submission benchmark's baseline: the daemon without the DKIM
# signature (body hash kept), to measure what signing adds to latency.
bench-unsigned:
	$(MAKE) BUILD=build/bench-unsigned OPT="$(OPT) -DSENDGATE_BENCH_UNSIGNED" \
		build/bench-unsigned/sendgate build/bench-unsigned/sendgatectl \
		build/bench-unsigned/sendgate-bench

# Memcheck (uninitialised reads ASan does not see, and definite leaks) on
# the normal build: every unit test, then the daemon and its delivery child
# through submission, signing, delivery, bounces and hostile input.
VALGRIND_OPTS  = --error-exitcode=86 --leak-check=full --show-leak-kinds=definite \
                 --errors-for-leak-kinds=definite --vgdb=no
VALGRIND_TESTS = $(addprefix tests/integration/,test_swaks.py test_dkim.py test_delivery.py \
                 test_bounces.py test_smuggling.py test_auth.py test_pipelining.py)

valgrind: deps all $(UNIT_BINS)
	@fail=0; for t in $(UNIT_BINS); do \
		echo "== valgrind $$t"; valgrind -q $(VALGRIND_OPTS) $$t || fail=1; \
	done; exit $$fail
	SENDGATE_VALGRIND="valgrind $(VALGRIND_OPTS)" SENDGATE_BUILD=$(abspath $(BUILD)) $(PYTHON) -m pytest -q \
		-p no:cacheprovider $(VALGRIND_TESTS) $(PYTEST_ARGS)

asan-build:
	$(MAKE) BUILD=build/asan OPT="-O1 -g -fno-omit-frame-pointer" \
		SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined" all $(patsubst $(BUILD)/%,build/asan/%,$(UNIT_BINS))

asan: deps asan-build
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
		$(MAKE) --no-print-directory BUILD=build/asan unit
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
		$(MAKE) --no-print-directory BUILD=build/asan PYTEST_ARGS="$(PYTEST_ARGS) -m 'not slow'" integration

test: deps
	$(MAKE) --no-print-directory all unit
	$(MAKE) --no-print-directory integration
	$(MAKE) --no-print-directory asan
	$(MAKE) --no-print-directory valgrind

run: deps all
	$(PYTHON) tools/demo.py

fuzz:
	$(MAKE) -C tests/fuzz

clean:
	rm -rf build
