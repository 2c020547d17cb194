// Writes the reference .hgrm files that loadgen/tests/hgrm_java.rs compares
// dex-trader's writer with, using HdrHistogram's own Java library (Debian:
// libhdrhistogram-java). Regenerate from the repository root with:
//
//   javac -cp /usr/share/java/hdrhistogram.jar -d /tmp loadgen/tests/data/HgrmReference.java
//   java -cp /usr/share/java/hdrhistogram.jar:/tmp HgrmReference loadgen/tests/data
//
// The histograms are the ones the test builds (same values, same order).
import java.io.FileOutputStream;
import java.io.PrintStream;
import org.HdrHistogram.Histogram;

public class HgrmReference {
    public static void main(String[] args) throws Exception {
        String dir = args[0];

        Histogram small = new Histogram(1, 3600000000000L, 3);
        for (long v : new long[] {100, 200, 250, 600}) {
            small.recordValue(v);
        }
        write(small, dir + "/java-small.hgrm", 1.0);

        // Latencies in ns, mostly 1 to 51 us, one in 97 up to 10 ms, with
        // repeat counts: enough values for the ticks past 99.99%.
        Histogram mixed = new Histogram(1, 3600000000000L, 3);
        long x = 88172645463325252L;
        for (int i = 0; i < 20000; i++) {
            x ^= x << 13;
            x ^= x >>> 7;
            x ^= x << 17;
            long v = 1000 + (x >>> 40) % 50000;
            if (i % 97 == 0) {
                v = 1000 + (x >>> 20) % 10000000;
            }
            mixed.recordValueWithCount(v, (x >>> 58) + 1);
        }
        write(mixed, dir + "/java-mixed.hgrm", 1000.0);
    }

    static void write(Histogram h, String path, double ratio) throws Exception {
        try (PrintStream out = new PrintStream(new FileOutputStream(path), false, "UTF-8")) {
            h.outputPercentileDistribution(out, 5, ratio);
        }
    }
}
