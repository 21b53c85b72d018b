// The decode graph's bookkeeping: after a step, the next one reads the following position.
// Numpy reference: pos[0] += 1 (orcd.cuda_backend.decode_program).
// Launched with programmatic stream serialization (orcd.cuda.PDL_FILES), it waits for the argmax before it.
extern "C" __global__ void advance_position(int* pos) {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
    if (threadIdx.x == 0 && blockIdx.x == 0) pos[0] += 1;
}

// The step's greedy id kept by position, so that several replays of the decode graph can run back to back and their
// ids be read once after them (CUDABackend.decode_greedy). Numpy reference: ring[pos[0]] = ids[0].
extern "C" __global__ void record_token(const int* ids, const int* pos, int* ring) {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
    if (threadIdx.x == 0 && blockIdx.x == 0) ring[pos[0]] = ids[0];
}
