// The decode graph's bookkeeping: after a step, the next one reads the following position.
// Numpy reference: pos[0] += 1 (orcd.cuda_backend.decode_program).
extern "C" __global__ void advance_position(int* pos) {
    if (threadIdx.x == 0 && blockIdx.x == 0) pos[0] += 1;
}
