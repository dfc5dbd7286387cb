/* The MPI constants that are not plain integers in mpi.h (pointer casts, whose values differ
 * between OpenMPI and MPICH), so the Rust side cannot get them from rsmpi's bindings. Built only
 * with the `mpi` feature, against the headers of the MPI the `mpi` crate links. */
#include <mpi.h>

void *anc_mpi_in_place(void) { return MPI_IN_PLACE; }

int anc_mpi_max_error_string(void) { return MPI_MAX_ERROR_STRING; }
